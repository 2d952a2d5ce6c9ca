//! `kervan`: the command line of a Kervan park node.

mod commands;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kervan_node::replica::{Outcome, Report};
use kervan_node::{DataDir, Replica, SledStore};
use kervan_protocol::{DeviceKey, ParkCard};

/// Kervan: a federated registry of technoparks, their startups, programs and applications.
#[derive(Debug, Parser)]
#[command(name = "kervan", version, propagate_version = true)]
struct Cli {
    /// The node's data directory.
    #[arg(
        long,
        global = true,
        env = "KERVAN_DATA_DIR",
        default_value = "kervan-data"
    )]
    data_dir: PathBuf,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: device key, API token, config; print the park card.
    Init(InitArgs),
    /// Write a federation's genesis from the founding parks' cards; print its id.
    Genesis(GenesisArgs),
    /// Adopt a federation: check that its genesis lists this device, store it, pin its id.
    Join {
        /// The genesis file (`kervan genesis --out`).
        #[arg(long)]
        genesis: PathBuf,
    },
    /// Write every accepted signed change to a bundle file (offline transfer, backup).
    Export {
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        /// Only changes authored at or after this RFC 3339 time, e.g. 2026-01-31T00:00:00Z.
        #[arg(long)]
        since: Option<String>,
    },
    /// Check and apply the signed changes of a bundle file; report on each.
    Import {
        /// The bundle file.
        file: PathBuf,
        /// Print the per-change report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Audit the signed history.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage this park's devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Build a local federation of real parks with sample data.
    Demo(DemoArgs),
    /// Check a configuration file; print "ok" or what is wrong.
    Validate {
        /// The config file (default: the data directory's config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Rebuild a damaged store from the signed changes it still holds; peers send the rest.
    /// The damaged store is kept aside, never deleted. The node must be stopped.
    Repair {
        /// Rebuild even if the store opens and verifies cleanly.
        #[arg(long)]
        force: bool,
    },
    /// Exit 0 if this data directory's node answers `/v1/health` (for container health checks).
    Health,
    /// Run the node: open the store, join the network, serve the API until SIGINT or SIGTERM.
    Run {
        /// A config file other than the data directory's config.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen for the API here instead of the configured address (port 0: any free port).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Listen for peers here instead of the configured multiaddrs (repeatable).
        #[arg(long)]
        listen: Vec<String>,
        /// Dial this member at start instead of the configured ones (repeatable).
        #[arg(long)]
        bootstrap: Vec<String>,
    },
    /// The running node's park, federation, digest, counts and peers.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Startups of the federation.
    #[command(subcommand)]
    Startups(RecordCommand),
    /// Programs of the federation.
    #[command(subcommand)]
    Programs(RecordCommand),
    /// Applications of startups to programs.
    #[command(subcommand)]
    Applications(ApplicationCommand),
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// How many parks (2 to 6), named after the federation's founding parks.
    #[arg(long, default_value_t = 4)]
    parks: usize,
    /// Sample startups per park.
    #[arg(long, default_value_t = 25)]
    startups: usize,
    /// Seed of the sample generator.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Where the parks' data directories go. A directory from an earlier demo is replaced.
    #[arg(long, default_value = "kervan-demo")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Re-verify every stored change; print counts and the state digest.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The signed history, newest first (needs a running node).
    Log {
        /// `federation` or `park/<id>`.
        #[arg(long)]
        doc: Option<String>,
        #[arg(long)]
        park: Option<String>,
        /// Only changes that wrote this record.
        #[arg(long)]
        record: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One change with its ops and signed envelope (needs a running node).
    Show {
        hash: String,
        #[arg(long)]
        json: bool,
    },
    /// Rejected changes with their reasons (needs a running node).
    Rejected {
        #[arg(long)]
        json: bool,
    },
}

/// Commands on startups or programs, through the running node's API.
#[derive(Debug, Subcommand)]
pub(crate) enum RecordCommand {
    /// List records of every park, filtered.
    List(ListArgs),
    /// One record.
    Show {
        /// `<park>/<local>`.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a record of this park from JSON (see `--data` and `--file`).
    Add(WriteArgs),
    /// Change the given fields of a record of this park; `null` removes a field.
    Update {
        id: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Remove a record of this park.
    Remove { id: String },
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[arg(long)]
    pub(crate) park: Option<String>,
    #[arg(long)]
    pub(crate) country: Option<String>,
    #[arg(long)]
    pub(crate) sector: Option<String>,
    #[arg(long)]
    pub(crate) stage: Option<String>,
    /// Program kind.
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// Text search over name or title, summary and tags.
    #[arg(long)]
    pub(crate) q: Option<String>,
    /// `id` or `name`.
    #[arg(long)]
    pub(crate) sort: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
    /// Follow the cursor to the end instead of printing one page.
    #[arg(long)]
    pub(crate) all: bool,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WriteArgs {
    /// The record as JSON, e.g. '{"name": "Qazaq Agro AI", "country": "KZ", ...}'.
    #[arg(long, conflicts_with = "file")]
    pub(crate) data: Option<String>,
    /// A file holding the record as JSON (`-` for standard input).
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    #[arg(long)]
    pub(crate) json: bool,
}

/// Commands on applications, through the running node's API.
#[derive(Debug, Subcommand)]
pub(crate) enum ApplicationCommand {
    /// Apply with one of this park's startups to a program.
    Add {
        #[arg(long)]
        startup: String,
        #[arg(long)]
        program: String,
        #[arg(long)]
        message: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Decide on an application to one of this park's programs.
    Decide {
        /// The application's id.
        id: String,
        /// accepted, rejected or waitlisted.
        #[arg(long)]
        status: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw one of this park's applications.
    Withdraw {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List applications with their status.
    List {
        /// The applicant park.
        #[arg(long)]
        park: Option<String>,
        #[arg(long)]
        program: Option<String>,
        /// The park hosting the program.
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// Register a further device of this park from the card its own `kervan init` printed
    /// (the card carries the device's proof that it holds its key).
    Add {
        /// The new device's card.
        #[arg(long)]
        card: PathBuf,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The park's id, a slug such as kz-astana-hub.
    #[arg(long)]
    park: String,
    /// The park's name.
    #[arg(long)]
    name: String,
    /// ISO 3166-1 alpha-2 country code, e.g. KZ.
    #[arg(long)]
    country: String,
    #[arg(long)]
    city: Option<String>,
    /// The park's website, http(s).
    #[arg(long)]
    website: Option<String>,
    /// A label for this device, e.g. "primary".
    #[arg(long)]
    label: Option<String>,
}

#[derive(Debug, Args)]
struct GenesisArgs {
    /// The federation's name.
    #[arg(long)]
    name: String,
    /// The charter text (or use --charter-file).
    #[arg(long, conflicts_with = "charter_file")]
    charter: Option<String>,
    /// A file holding the charter text.
    #[arg(long)]
    charter_file: Option<PathBuf>,
    /// A founding park's card (`kervan init` prints it); repeat for each park.
    #[arg(long = "card", required = true)]
    cards: Vec<PathBuf>,
    /// Where to write the genesis file (`-`: standard output, the id then goes to stderr).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (a message that already ends with
/// its cause's text does not repeat it).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for m in e.chain().map(ToString::to_string) {
        if out.ends_with(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = DataDir::new(&cli.data_dir);
    match cli.command {
        Command::Init(args) => init(&dir, args),
        Command::Genesis(args) => genesis(args),
        Command::Join { genesis } => join(&dir, &genesis),
        Command::Repair { force } => repair(&dir, force),
        Command::Export { out, since } => match commands::running(&dir) {
            Some(c) => commands::export(&c, &out, since.as_deref()),
            None => export(&dir, &out, since.as_deref()),
        },
        Command::Import { file, json } => match commands::running(&dir) {
            Some(c) => commands::import(&c, &file, json),
            None => import(&dir, &file, json),
        },
        Command::Audit(AuditCommand::Verify { json }) => match commands::running(&dir) {
            Some(c) => commands::audit_verify(&c, json),
            None => audit_verify(&dir, json),
        },
        Command::Audit(AuditCommand::Log {
            doc,
            park,
            record,
            limit,
            json,
        }) => commands::audit_log(&commands::client(&dir)?, doc, park, record, limit, json),
        Command::Audit(AuditCommand::Show { hash, json }) => {
            commands::audit_show(&commands::client(&dir)?, &hash, json)
        }
        Command::Audit(AuditCommand::Rejected { json }) => {
            commands::audit_rejected(&commands::client(&dir)?, json)
        }
        Command::Run {
            config,
            api,
            listen,
            bootstrap,
        } => {
            let parse = |v: Vec<String>| -> anyhow::Result<Option<Vec<libp2p::Multiaddr>>> {
                if v.is_empty() {
                    return Ok(None);
                }
                v.iter()
                    .map(|a| {
                        a.parse()
                            .map_err(|e| anyhow::anyhow!("{a:?} is not a multiaddr: {e}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map(Some)
            };
            let o = kervan_node::node::Overrides {
                api,
                listen: parse(listen)?,
                bootstrap: parse(bootstrap)?,
                sync_interval: None,
            };
            commands::run_node(&dir, config.as_deref(), o)
        }
        Command::Status { json } => commands::status(&commands::client(&dir)?, json),
        Command::Startups(cmd) => commands::records(&commands::client(&dir)?, "startups", cmd),
        Command::Programs(cmd) => commands::records(&commands::client(&dir)?, "programs", cmd),
        Command::Applications(cmd) => commands::applications(&commands::client(&dir)?, cmd),
        Command::Demo(args) => demo(args),
        Command::Validate { config } => {
            let path = config.unwrap_or_else(|| dir.path("config.toml"));
            let c = kervan_node::Config::load(&path)?;
            println!(
                "ok: {} is a valid config for park {}",
                path.display(),
                c.park
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => {
            let c = kervan_node::client::Client::new(&dir)?;
            c.json("GET", "/v1/health", kervan_node::client::Body::None)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices(DevicesCommand::Add { card }) => {
            let text = std::fs::read_to_string(&card)
                .with_context(|| format!("cannot read card {}", card.display()))?;
            let card: ParkCard = serde_json::from_str(&text)
                .with_context(|| format!("card {} is invalid", card.display()))?;
            let mut replica = open(&dir)?;
            let hash = replica.add_device(&card)?;
            replica.snapshot_all()?;
            println!(
                "registered device {} for park {} in change {hash}",
                card.device, card.id
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dir_park(dir: &DataDir) -> anyhow::Result<String> {
    Ok(dir.config()?.park.to_string())
}

fn open(dir: &DataDir) -> anyhow::Result<Replica<SledStore>> {
    dir.open_replica()
        .with_context(|| format!("cannot open the node in {}", dir.root().display()))
}

fn init(dir: &DataDir, args: InitArgs) -> anyhow::Result<ExitCode> {
    let card = ParkCard {
        id: args.park.parse()?,
        name: args.name,
        country: args.country,
        city: args.city,
        website: args.website,
        device: DeviceKey([0; 32]),
        epoch: String::new(),
        proof: String::new(),
        label: args.label,
    };
    let card = dir.init(card)?;
    eprintln!(
        "initialised {} for park {}; send card.json to the federation's convener",
        dir.root().display(),
        card.id
    );
    println!("{}", serde_json::to_string_pretty(&card)?);
    Ok(ExitCode::SUCCESS)
}

fn genesis(args: GenesisArgs) -> anyhow::Result<ExitCode> {
    let to_stdout = args.out.as_os_str() == "-";
    if !to_stdout && args.out.exists() {
        bail!(
            "{} already exists; refusing to overwrite a genesis",
            args.out.display()
        );
    }
    let charter = match (&args.charter, &args.charter_file) {
        (Some(c), _) => c.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => "The member parks exchange startups, programs and applications as equals; \
            no member hosts the master copy."
            .to_owned(),
    };
    let mut cards = Vec::new();
    for path in &args.cards {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read card {}", path.display()))?;
        let card: ParkCard = serde_json::from_str(&text)
            .with_context(|| format!("card {} is invalid", path.display()))?;
        cards.push(card);
    }
    let (federation, bytes) = kervan_node::data_dir::genesis_file(&args.name, &charter, &cards)?;
    if to_stdout {
        use std::io::Write as _;
        std::io::stdout().write_all(&bytes)?;
        eprintln!("{federation}");
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::write(&args.out, bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "wrote the genesis of {:?} with {} parks to {}",
        args.name,
        cards.len(),
        args.out.display()
    );
    println!("{federation}");
    Ok(ExitCode::SUCCESS)
}

fn join(dir: &DataDir, genesis: &Path) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(genesis).with_context(|| format!("cannot read {}", genesis.display()))?;
    let joined = dir.join(&bytes)?;
    println!("joined federation {}", joined.federation);
    if joined.started_ledger {
        println!("started the ledger of park {}", dir_park(dir)?);
    }
    if !joined.device_listed {
        println!(
            "this device is not in the genesis: a device of park {} registers it with `kervan devices add --card {}`",
            dir_park(dir)?,
            dir.path("card.json").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn repair(dir: &DataDir, force: bool) -> anyhow::Result<ExitCode> {
    if commands::running(dir).is_some() {
        bail!("the node of this data directory is running: stop it before repairing its store");
    }
    let r = dir.repair(force)?;
    if !r.needed {
        println!(
            "the store opens and every stored change verifies: nothing to repair (--force rebuilds anyway)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for p in &r.problems {
        println!("unreadable: {p}");
    }
    if let Some(aside) = &r.aside {
        println!("the damaged store is kept at {aside}");
    }
    println!(
        "rebuilt the store: {} signed changes recovered, {} waiting for changes the peers hold, {} refused",
        r.recovered, r.pending, r.refused
    );
    println!("start the node: it fetches everything else from its peers");
    Ok(ExitCode::SUCCESS)
}

fn export(dir: &DataDir, out: &Path, since: Option<&str>) -> anyhow::Result<ExitCode> {
    let since = since
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|_| {
                    anyhow!(
                        "--since expects an RFC 3339 time such as 2026-01-31T00:00:00Z, found {s:?}"
                    )
                })
        })
        .transpose()?;
    let replica = open(dir)?;
    let bundle = replica.export(since)?;
    std::fs::write(out, bundle.encode())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "exported {} signed changes to {}",
        bundle.entries.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn import(dir: &DataDir, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut replica = open(dir)?;
    let reports = replica
        .import(&bytes, "import")
        .with_context(|| format!("cannot import {}", file.display()))?;
    replica.snapshot_all()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            println!("{}", describe(r));
        }
    }
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    eprintln!(
        "{} accepted, {} duplicate, {} pending, {} rejected; digest {}",
        count(|o| matches!(o, Outcome::Accepted)),
        count(|o| matches!(o, Outcome::Duplicate)),
        count(|o| matches!(o, Outcome::Pending { .. })),
        count(|o| matches!(o, Outcome::Rejected { .. })),
        replica.digest()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn describe(r: &Report) -> String {
    let hash = r.hash.map_or_else(
        || "(unparsed)".to_owned(),
        |h| h.to_string()[..16].to_owned(),
    );
    let doc = r.doc.as_ref().map_or_else(String::new, ToString::to_string);
    match &r.outcome {
        Outcome::Accepted => format!("accepted   {hash} {doc}"),
        Outcome::Duplicate => format!("duplicate  {hash} {doc}"),
        Outcome::Pending { reason } => format!("pending    {hash} {doc}: {reason}"),
        Outcome::Rejected { reason, .. } => format!("rejected   {hash} {doc}: {reason}"),
    }
}

fn audit_verify(dir: &DataDir, json: bool) -> anyhow::Result<ExitCode> {
    let replica = open(dir)?;
    let report = replica.verify_all()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("stored changes   {}", report.stored);
        println!("signatures ok    {}", report.verified);
        println!("accepted         {}", report.accepted);
        println!("pending          {}", report.pending);
        println!("excluded         {}", report.excluded);
        println!("rejected         {}", report.rejected);
        println!("evidence         {}", report.evidence);
        println!("digest           {}", report.digest);
        for (hash, why) in &report.failed {
            println!("FAILED {hash}: {why}");
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const DEMO_MARKER: &str = ".kervan-demo";

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    use kervan_node::demo;
    if !(2..=6).contains(&args.parks) {
        bail!("--parks must be 2 to 6, found {}", args.parks);
    }
    if args.dir.exists() {
        if !args.dir.join(DEMO_MARKER).exists() {
            bail!(
                "{} exists and is not an earlier demo; pass --dir with a new directory",
                args.dir.display()
            );
        }
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot remove the earlier demo in {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    std::fs::write(args.dir.join(DEMO_MARKER), "a kervan demo federation\n")?;
    let (federation, dirs) = demo::prepare(&args.dir, args.parks, args.startups, args.seed)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let nodes = demo::start(&dirs, std::time::Duration::from_secs(1)).await?;
        let timeout = std::time::Duration::from_secs(120);
        let first = demo::converge(&nodes, timeout).await?;
        let apps = demo::apply(&nodes).await?;
        demo::converge(&nodes, timeout).await?;
        demo::decide(&nodes, apps).await?;
        let last = demo::converge(&nodes, timeout).await?;
        println!("federation {federation}");
        println!(
            "{} parks converged over the network in {:.1} s (then {:.1} s after the last decision)",
            nodes.len(),
            first.as_secs_f64(),
            last.as_secs_f64()
        );
        println!(
            "{:<22} {:>8} {:>8} {:>5}  {:<16}  {:<22}  api token",
            "park", "startups", "programs", "apps", "digest", "api"
        );
        for n in &nodes {
            let (c, digest) = n
                .replica
                .call(|r| (r.index().counts(), r.digest()))
                .await
                .map_err(|_| anyhow!("the replica stopped"))?;
            println!(
                "{:<22} {:>8} {:>8} {:>5}  {:<16}  http://{:<15}  {}",
                n.park.to_string(),
                c.startups,
                c.programs,
                c.applications,
                &digest.to_string()[..16],
                n.api_addr.to_string(),
                n.token
            );
        }
        println!(
            "all parks hold the same registry. Try: curl -H \"Authorization: Bearer {}\" http://{}/v1/applications",
            nodes[0].token, nodes[0].api_addr
        );
        println!(
            "or: kervan --data-dir {} startups list --q ai",
            dirs[0].root().display()
        );
        println!("serving until Ctrl-C");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        for n in nodes {
            n.stop().await?;
        }
        println!("stopped; the parks' data stays in {}", args.dir.display());
        Ok(ExitCode::SUCCESS)
    })
}
