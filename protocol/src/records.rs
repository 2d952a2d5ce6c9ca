//! The records of the registry: one schema table per record kind, field validation against
//! it, the typed views the API answers with, and their mapping to and from Automerge maps.
//!
//! The same schema serves two checks. The API validates a whole JSON record (required fields,
//! unknown fields, the current year); the validation rules check every op a peer sends against
//! the kind of the field it writes, which needs no clock and no other record.

use std::collections::{BTreeMap, HashMap};

use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, hydrate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{DeviceKey, ParkId, RecordId};

/// The kind of value a field holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A string of `min..=max` characters.
    Text {
        min: usize,
        max: usize,
    },
    /// An ISO 3166-1 alpha-2 country code.
    Country,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A year from 1990; the API also holds it to the current year.
    Year,
    Bool,
    /// An http(s) URL.
    Url,
    Email,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An RFC 3339 timestamp.
    Timestamp,
    /// The id of a record, `<park>/<local>`.
    Ref,
    /// A list of `min..=max` distinct items, all of one kind.
    List {
        item: &'static Kind,
        min: usize,
        max: usize,
    },
    /// A nested map with its own fields.
    Object(&'static [Field]),
}

/// One field of a record.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// Set by the node, never by the caller (timestamps).
    pub server: bool,
}

const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
        server: false,
    }
}

const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
        server: false,
    }
}

const fn server(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
        server: true,
    }
}

pub const SECTORS: &[&str] = &[
    "ai",
    "agritech",
    "cleantech",
    "cybersecurity",
    "ecommerce",
    "edtech",
    "fintech",
    "gaming",
    "govtech",
    "healthtech",
    "logistics",
    "mediatech",
    "proptech",
    "traveltech",
    "other",
];
pub const STAGES: &[&str] = &["idea", "mvp", "seed", "series_a", "growth"];
pub const LOOKING_FOR: &[&str] = &[
    "investment",
    "market_entry",
    "pilot_customers",
    "partners",
    "talent",
    "residency",
];
pub const PROGRAM_KINDS: &[&str] = &[
    "residency",
    "incubation",
    "acceleration",
    "coworking",
    "housing",
    "grant",
    "b2b_meetings",
    "event",
    "venture_fund",
];
pub const DECISION_STATUSES: &[&str] = &["accepted", "rejected", "waitlisted"];

const SHORT_TEXT: Kind = Kind::Text { min: 0, max: 100 };
const TAG: Kind = Kind::Text { min: 1, max: 40 };
const COUNTRY: Kind = Kind::Country;
const STAGE: Kind = Kind::Choice(STAGES);

const CONTACT: &[Field] = &[field("name", SHORT_TEXT), field("email", Kind::Email)];
const ELIGIBILITY: &[Field] = &[
    field(
        "countries",
        Kind::List {
            item: &COUNTRY,
            min: 0,
            max: 249,
        },
    ),
    field(
        "stages",
        Kind::List {
            item: &STAGE,
            min: 0,
            max: 5,
        },
    ),
];

pub const STARTUP_FIELDS: &[Field] = &[
    required("name", Kind::Text { min: 1, max: 200 }),
    required("country", Kind::Country),
    field("city", SHORT_TEXT),
    required(
        "sectors",
        Kind::List {
            item: &Kind::Choice(SECTORS),
            min: 1,
            max: 5,
        },
    ),
    required("stage", STAGE),
    field("founded", Kind::Year),
    field(
        "team_size",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
    ),
    field("website", Kind::Url),
    field("summary", Kind::Text { min: 0, max: 2000 }),
    field(
        "looking_for",
        Kind::List {
            item: &Kind::Choice(LOOKING_FOR),
            min: 0,
            max: 6,
        },
    ),
    field("contact", Kind::Object(CONTACT)),
    field(
        "tags",
        Kind::List {
            item: &TAG,
            min: 0,
            max: 20,
        },
    ),
    server("created_at", Kind::Timestamp),
    server("updated_at", Kind::Timestamp),
];

pub const PROGRAM_FIELDS: &[Field] = &[
    required("kind", Kind::Choice(PROGRAM_KINDS)),
    required("title", Kind::Text { min: 1, max: 200 }),
    field("summary", Kind::Text { min: 0, max: 4000 }),
    field(
        "seats",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    field("starts", Kind::Date),
    field("ends", Kind::Date),
    field(
        "benefits",
        Kind::List {
            item: &Kind::Text { min: 1, max: 200 },
            min: 0,
            max: 20,
        },
    ),
    field("eligibility", Kind::Object(ELIGIBILITY)),
    field("open", Kind::Bool),
    server("created_at", Kind::Timestamp),
    server("updated_at", Kind::Timestamp),
];

pub const APPLICATION_FIELDS: &[Field] = &[
    required("startup", Kind::Ref),
    required("program", Kind::Ref),
    field("message", Kind::Text { min: 0, max: 2000 }),
    field("withdrawn", Kind::Bool),
    server("submitted_at", Kind::Timestamp),
];

pub const DECISION_FIELDS: &[Field] = &[
    required("status", Kind::Choice(DECISION_STATUSES)),
    field("note", Kind::Text { min: 0, max: 2000 }),
    server("decided_at", Kind::Timestamp),
];

/// A park's profile in the federation document.
pub const PARK_FIELDS: &[Field] = &[
    required("name", Kind::Text { min: 1, max: 200 }),
    required("country", Kind::Country),
    field("city", SHORT_TEXT),
    field("website", Kind::Url),
];

/// A device entry under `parks/<id>/devices/<key>` in the federation document.
pub const DEVICE_FIELDS: &[Field] = &[
    field("label", SHORT_TEXT),
    server("added_at", Kind::Timestamp),
    // The device's signature over "kervan/device/v1" and the park id: proof that whoever
    // registers it holds its key.
    server("proof", Kind::Text { min: 128, max: 128 }),
];

/// The collections of a park ledger, in the order its first change creates them.
pub const COLLECTIONS: &[&str] = &["startups", "programs", "applications", "decisions"];

/// The fields of a ledger collection's records.
pub fn collection_fields(collection: &str) -> Option<&'static [Field]> {
    match collection {
        "startups" => Some(STARTUP_FIELDS),
        "programs" => Some(PROGRAM_FIELDS),
        "applications" => Some(APPLICATION_FIELDS),
        "decisions" => Some(DECISION_FIELDS),
        _ => None,
    }
}

pub fn find_field(fields: &'static [Field], name: &str) -> Option<&'static Field> {
    fields.iter().find(|f| f.name == name)
}

const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ \
BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ \
DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT \
GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY \
KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX \
MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS \
RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN \
TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Whether `code` is an ISO 3166-1 alpha-2 country code (upper case).
pub fn is_country(code: &str) -> bool {
    code.len() == 2 && COUNTRIES.split(' ').any(|c| c == code)
}

/// A scalar as both JSON and Automerge can hold it, for one validation path.
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Null,
    /// Bytes, floats, counters, timestamps and unknown types: the schema allows none of them.
    Other(&'static str),
}

impl<'a> Scalar<'a> {
    pub fn from_automerge(v: &'a ScalarValue) -> Self {
        match v {
            ScalarValue::Str(s) => Scalar::Str(s),
            ScalarValue::Int(i) => Scalar::Int(*i),
            ScalarValue::Uint(u) => i64::try_from(*u).map_or(Scalar::Other("uint"), Scalar::Int),
            ScalarValue::Boolean(b) => Scalar::Bool(*b),
            ScalarValue::Null => Scalar::Null,
            ScalarValue::Bytes(_) => Scalar::Other("bytes"),
            ScalarValue::F64(_) => Scalar::Other("float"),
            ScalarValue::Counter(_) => Scalar::Other("counter"),
            ScalarValue::Timestamp(_) => Scalar::Other("timestamp"),
            ScalarValue::Unknown { .. } => Scalar::Other("unknown"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Scalar::Str(s) if s.chars().count() > 40 => {
                let cut: String = s.chars().take(40).collect();
                format!("{cut:?}…")
            }
            Scalar::Str(s) => format!("{s:?}"),
            Scalar::Int(i) => i.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => "null".into(),
            Scalar::Other(t) => format!("a {t}"),
        }
    }
}

/// Checks one scalar against a scalar kind. `this_year` bounds `Year` fields when the check
/// runs at the API; the validation rules pass `None`, because a peer's verdict must not depend
/// on the local clock.
pub fn check_scalar(kind: &Kind, v: Scalar<'_>, this_year: Option<i64>) -> Result<(), String> {
    // Described only for an error: a verdict is taken for every field of every change.
    let found = || v.describe();
    let text = |what: &str| match v {
        Scalar::Str(s) => Ok(s),
        _ => Err(format!("expected {what}, found {found}", found = found())),
    };
    match kind {
        Kind::Text { min, max } => {
            let s = text("a string")?;
            let n = s.chars().count();
            if n < *min || n > *max {
                return Err(format!(
                    "expected {min} to {max} characters, found {n} characters"
                ));
            }
            if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err("expected text without control characters".into());
            }
            Ok(())
        }
        Kind::Country => {
            let s = text("an ISO 3166-1 alpha-2 country code")?;
            if is_country(s) {
                Ok(())
            } else {
                Err(format!(
                    "expected an ISO 3166-1 alpha-2 country code such as \"KZ\", found {found}",
                    found = found()
                ))
            }
        }
        Kind::Choice(options) => {
            let s = text("a string")?;
            if options.contains(&s) {
                Ok(())
            } else {
                Err(format!(
                    "expected one of {}, found {}",
                    options.join(" "),
                    found()
                ))
            }
        }
        Kind::Int { min, max } => match v {
            Scalar::Int(i) if (*min..=*max).contains(&i) => Ok(()),
            _ => Err(format!(
                "expected an integer from {min} to {max}, found {found}",
                found = found()
            )),
        },
        Kind::Year => {
            let max = this_year.unwrap_or(2100);
            match v {
                Scalar::Int(i) if (1990..=max).contains(&i) => Ok(()),
                _ => Err(format!(
                    "expected a year from 1990 to {max}, found {found}",
                    found = found()
                )),
            }
        }
        Kind::Bool => match v {
            Scalar::Bool(_) => Ok(()),
            _ => Err(format!(
                "expected true or false, found {found}",
                found = found()
            )),
        },
        Kind::Url => {
            let s = text("an http(s) URL")?;
            if is_url(s) {
                Ok(())
            } else {
                Err(format!(
                    "expected an http(s) URL, found {found}",
                    found = found()
                ))
            }
        }
        Kind::Email => {
            let s = text("an e-mail address")?;
            if is_email(s) {
                Ok(())
            } else {
                Err(format!(
                    "expected an e-mail address, found {found}",
                    found = found()
                ))
            }
        }
        Kind::Date => {
            let s = text("a date")?;
            parse_date(s).map(|_| ()).ok_or_else(|| {
                format!(
                    "expected a date as YYYY-MM-DD, found {found}",
                    found = found()
                )
            })
        }
        Kind::Timestamp => {
            let s = text("a timestamp")?;
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|_| ())
                .map_err(|_| {
                    format!(
                        "expected an RFC 3339 timestamp, found {found}",
                        found = found()
                    )
                })
        }
        Kind::Ref => {
            let s = text("a record id")?;
            s.parse::<RecordId>().map(|_| ()).map_err(|_| {
                format!(
                    "expected a record id '<park>/<local>', found {found}",
                    found = found()
                )
            })
        }
        Kind::List { .. } => {
            // Lists are stored as one JSON string: a park rewrites a list whole, and one op per
            // list keeps the schema a set of map paths.
            let s = text("a JSON list")?;
            let items: Value = serde_json::from_str(s)
                .map_err(|_| format!("expected a JSON list, found {found}", found = found()))?;
            if !items.is_array() {
                return Err(format!(
                    "expected a JSON list, found {found}",
                    found = found()
                ));
            }
            let mut errors = Vec::new();
            validate_value(kind, &items, this_year.unwrap_or(2100), "", &mut errors);
            match errors.first() {
                None => Ok(()),
                Some(e) => Err(format!("{}{}", e.field, e.message)),
            }
        }
        Kind::Object(_) => Err(format!(
            "expected an object, found {found}",
            found = found()
        )),
    }
}

pub fn parse_date(s: &str) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    if s.len() != 10 {
        return None;
    }
    time::Date::parse(s, &format).ok()
}

fn is_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            s.len() <= 2000
                && !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !local.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// One invalid field of a request, named by its path (`contact.email`, `sectors[2]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every invalid field of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", describe_errors(.0))]
pub struct FieldErrors(pub Vec<FieldError>);

fn describe_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a request creates a record (required fields must be present) or patches one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Create,
    Patch,
}

/// Validates a JSON object from a caller against `fields`. A patch may set a field to `null`
/// to remove it, unless the field is required. Every bad field is reported, not just the first.
pub fn validate_input(
    fields: &'static [Field],
    input: &Value,
    mode: Mode,
    this_year: i64,
) -> Result<(), FieldErrors> {
    let mut errors = Vec::new();
    match input.as_object() {
        Some(obj) => validate_object(fields, obj, mode, this_year, "", &mut errors),
        None => errors.push(FieldError {
            field: "(body)".into(),
            message: "expected a JSON object".into(),
        }),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(FieldErrors(errors))
    }
}

fn validate_object(
    fields: &'static [Field],
    obj: &Map<String, Value>,
    mode: Mode,
    this_year: i64,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) {
    let mut push = |field: String, message: String| errors.push(FieldError { field, message });
    for (name, value) in obj {
        let path = format!("{prefix}{name}");
        let Some(f) = fields.iter().find(|f| f.name == name) else {
            push(path, "unknown field".into());
            continue;
        };
        if f.server {
            push(path, "is set by the node and cannot be written".into());
            continue;
        }
        if value.is_null() {
            if f.required || mode == Mode::Create {
                push(path, "must not be null".into());
            }
            continue;
        }
        let mut sub = Vec::new();
        validate_value(&f.kind, value, this_year, &path, &mut sub);
        errors_extend(&mut push, sub);
    }
    if mode == Mode::Create {
        for f in fields.iter().filter(|f| f.required) {
            if !obj.contains_key(f.name) {
                push(format!("{prefix}{}", f.name), "is required".into());
            }
        }
    }
}

fn errors_extend(push: &mut impl FnMut(String, String), sub: Vec<FieldError>) {
    for e in sub {
        push(e.field, e.message);
    }
}

fn validate_value(
    kind: &Kind,
    value: &Value,
    this_year: i64,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    match (kind, value) {
        (Kind::List { item, min, max }, Value::Array(items)) => {
            if items.len() < *min || items.len() > *max {
                errors.push(FieldError {
                    field: path.to_owned(),
                    message: format!("expected {min} to {max} items, found {}", items.len()),
                });
            }
            for (i, v) in items.iter().enumerate() {
                validate_value(item, v, this_year, &format!("{path}[{i}]"), errors);
            }
            let mut seen = std::collections::HashSet::new();
            if items.iter().any(|v| !seen.insert(v.to_string())) {
                errors.push(FieldError {
                    field: path.to_owned(),
                    message: "expected no duplicate items".into(),
                });
            }
        }
        (Kind::Object(fields), Value::Object(obj)) => {
            validate_object(
                fields,
                obj,
                Mode::Patch,
                this_year,
                &format!("{path}."),
                errors,
            );
        }
        _ => {
            let scalar = match value {
                Value::String(s) => Scalar::Str(s),
                Value::Bool(b) => Scalar::Bool(*b),
                Value::Number(n) => n.as_i64().map_or(Scalar::Other("non-integer"), Scalar::Int),
                Value::Null => Scalar::Null,
                Value::Array(_) => Scalar::Other("list"),
                Value::Object(_) => Scalar::Other("object"),
            };
            if let Err(message) = check_scalar(kind, scalar, Some(this_year)) {
                errors.push(FieldError {
                    field: path.to_owned(),
                    message,
                });
            }
        }
    }
}

/// Maps one validated field value to the Automerge value that stores it: objects as maps,
/// lists as one JSON string, scalars as scalars.
pub fn field_to_automerge(kind: &Kind, value: &Value) -> hydrate::Value {
    match (kind, value) {
        (Kind::Object(fields), Value::Object(obj)) => record_to_automerge(fields, obj),
        (Kind::List { .. }, v) => hydrate::Value::Scalar(ScalarValue::Str(v.to_string().into())),
        (_, Value::String(s)) => hydrate::Value::Scalar(ScalarValue::Str(s.as_str().into())),
        (_, Value::Bool(b)) => hydrate::Value::Scalar(ScalarValue::Boolean(*b)),
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => hydrate::Value::Scalar(ScalarValue::Int(i)),
            None => hydrate::Value::Scalar(ScalarValue::F64(n.as_f64().unwrap_or(0.0))),
        },
        _ => hydrate::Value::Scalar(ScalarValue::Null),
    }
}

/// Maps a validated JSON record to the Automerge map that stores it. Fields the schema does
/// not know and null values are left out.
pub fn record_to_automerge(fields: &'static [Field], obj: &Map<String, Value>) -> hydrate::Value {
    let map: HashMap<String, hydrate::Value> = fields
        .iter()
        .filter_map(|f| {
            let v = obj.get(f.name).filter(|v| !v.is_null())?;
            Some((f.name.to_owned(), field_to_automerge(&f.kind, v)))
        })
        .collect();
    hydrate::Value::Map(map.into())
}

/// Maps a stored record back to JSON by its schema. Values that do not fit their field (a
/// peer's own ledger may hold what its API would refuse) are left out rather than guessed at.
pub fn record_from_automerge(fields: &'static [Field], value: &hydrate::Value) -> Value {
    let hydrate::Value::Map(map) = value else {
        return Value::Null;
    };
    let mut out = Map::new();
    for f in fields {
        let Some(v) = map.get(f.name) else { continue };
        let json = match (&f.kind, v) {
            (Kind::Object(sub), hydrate::Value::Map(_)) => record_from_automerge(sub, v),
            (Kind::List { .. }, hydrate::Value::Scalar(ScalarValue::Str(s))) => {
                serde_json::from_str::<Value>(s).unwrap_or(Value::Null)
            }
            (_, hydrate::Value::Scalar(s)) => match s {
                ScalarValue::Str(s) => Value::String(s.to_string()),
                ScalarValue::Int(i) => Value::from(*i),
                ScalarValue::Uint(u) => Value::from(*u),
                ScalarValue::Boolean(b) => Value::Bool(*b),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
        if !json.is_null() {
            out.insert(f.name.to_owned(), json);
        }
    }
    Value::Object(out)
}

/// What [`record_from_automerge`] makes of the map `obj` of `doc`, read straight out of the
/// document with `map_range`: hydrating first built an owned value of every field only for
/// this to copy it again (a 14-field record of a 10k-record ledger: see
/// `tests/examples/read_record.rs`).
pub fn record_from_doc<D: ReadDoc>(fields: &'static [Field], doc: &D, obj: &ObjId) -> Value {
    use automerge::{ScalarValueRef as S, ValueRef};
    let mut out = Map::new();
    for item in doc.map_range(obj, ..) {
        let Some(f) = find_field(fields, &item.key) else {
            continue;
        };
        let json = match (&f.kind, &item.value) {
            (Kind::Object(sub), ValueRef::Object(ObjType::Map)) => {
                record_from_doc(sub, doc, &item.id())
            }
            (Kind::List { .. }, ValueRef::Scalar(S::Str(s))) => {
                serde_json::from_str::<Value>(s).unwrap_or(Value::Null)
            }
            (_, ValueRef::Scalar(s)) => match s {
                S::Str(s) => Value::String(s.to_string()),
                S::Int(i) => Value::from(*i),
                S::Uint(u) => Value::from(*u),
                S::Boolean(b) => Value::Bool(*b),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
        if !json.is_null() {
            out.insert(f.name.to_owned(), json);
        }
    }
    Value::Object(out)
}

/// What a change's ops leave at one key of a map: a scalar, or a map the same change made
/// (named by the counter of the op that made it).
#[derive(Debug, Clone)]
enum Left {
    Scalar(ScalarValue),
    Map(u64),
}

/// The ops of one change still visible at each key of a map, by counter, in the order made.
type Visible = BTreeMap<String, Vec<(u64, Left)>>;

/// A record a change makes: its collection, its key in the collection's map (the record id)
/// and its fields as [`record_from_doc`] reads them once the change is applied.
pub type MadeRecord = (&'static str, String, Value);

/// The records `change` makes, each as [`record_from_doc`] would read it out of the document
/// once the change is applied, where that follows from the change's own ops; `None` where it
/// depends on what the document already holds.
///
/// It holds for a change applied on top of everything the document holds (its dependencies
/// are the document's heads): its ops then have higher counters than every op there (the
/// rules hold `start_op` to one more than the causal past's highest), so each one wins its key
/// over whatever was there, as Automerge's maps keep the value of the highest op id. What it
/// cannot tell from the ops, it answers `None` for: an op on an object that is neither a
/// collection's map (`collection_of` names those, by the counter and actor of the op that made
/// them) nor a map this change made (an edit of an existing record), a delete in a
/// collection's map (what reappears depends on the document), a scalar left where a record
/// would be, a predecessor that is not a visible op of this change at the same key, an op at
/// the root, and anything but maps and scalars.
pub fn records_made_by(
    change: &automerge::Change,
    collection_of: impl Fn(u64, &automerge::ActorId) -> Option<&'static str>,
) -> Option<Vec<MadeRecord>> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let expanded = change.decode();
    let actor = change.actor_id();
    let start = change.start_op().get();
    let ops = start..start + expanded.operations.len() as u64;
    let mine = |id: &automerge::legacy::OpId| &id.1 == actor && ops.contains(&id.0);
    // Maps this change made, and the keys of collection maps it wrote, with the ops of this
    // change still visible at each: ops the document held before lose to them.
    let mut made: BTreeMap<u64, Visible> = BTreeMap::new();
    let mut records: BTreeMap<(&'static str, String), Vec<(u64, Left)>> = BTreeMap::new();
    for (i, op) in expanded.operations.iter().enumerate() {
        let me = start + i as u64;
        let Key::Map(key) = &op.key else { return None };
        if op.insert {
            return None;
        }
        let left = match &op.action {
            OpType::Make(ObjType::Map) => Some(Left::Map(me)),
            OpType::Put(v) => Some(Left::Scalar(v.clone())),
            OpType::Delete => None,
            _ => return None,
        };
        let (slot, in_collection) = match &op.obj {
            ObjectId::Id(id) if mine(id) => (
                made.get_mut(&id.0)?.entry(key.to_string()).or_default(),
                false,
            ),
            ObjectId::Id(id) => {
                let collection = collection_of(id.0, &id.1)?;
                left.as_ref()?;
                let slot = records.entry((collection, key.to_string())).or_default();
                (slot, true)
            }
            ObjectId::Root => return None,
        };
        for pred in op.pred.iter() {
            if !mine(pred) {
                // An op the document held: it loses to this one at a collection's key, and a
                // map this change made holds none.
                if in_collection {
                    continue;
                }
                return None;
            }
            let at = slot.iter().position(|(c, _)| *c == pred.0)?;
            slot.remove(at);
        }
        if let Some(left) = left {
            slot.push((me, left));
        }
        if matches!(op.action, OpType::Make(ObjType::Map)) {
            made.insert(me, Visible::new());
        }
    }
    let mut out = Vec::with_capacity(records.len());
    for ((collection, key), visible) in records {
        let (_, Left::Map(obj)) = visible.iter().max_by_key(|(c, _)| *c)? else {
            return None;
        };
        let fields = collection_fields(collection)?;
        out.push((collection, key, made_json(fields, &made, *obj)));
    }
    Some(out)
}

/// The map `obj` a change made, as [`record_from_doc`] reads it: the same fields, the same
/// conversions.
fn made_json(fields: &'static [Field], made: &BTreeMap<u64, Visible>, obj: u64) -> Value {
    let mut out = Map::new();
    for (key, visible) in made.get(&obj).into_iter().flatten() {
        let Some((_, left)) = visible.iter().max_by_key(|(c, _)| *c) else {
            continue;
        };
        let Some(f) = find_field(fields, key) else {
            continue;
        };
        let json = match (&f.kind, left) {
            (Kind::Object(sub), Left::Map(o)) => made_json(sub, made, *o),
            (Kind::List { .. }, Left::Scalar(ScalarValue::Str(s))) => {
                serde_json::from_str::<Value>(s).unwrap_or(Value::Null)
            }
            (_, Left::Scalar(s)) => match s {
                ScalarValue::Str(s) => Value::String(s.to_string()),
                ScalarValue::Int(i) => Value::from(*i),
                ScalarValue::Uint(u) => Value::from(*u),
                ScalarValue::Boolean(b) => Value::Bool(*b),
                _ => Value::Null,
            },
            _ => Value::Null,
        };
        if !json.is_null() {
            out.insert(f.name.to_owned(), json);
        }
    }
    Value::Object(out)
}

/// A contact person of a startup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contact {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

/// A startup, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Startup {
    pub id: RecordId,
    pub park: ParkId,
    pub name: String,
    pub country: String,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub sectors: Vec<String>,
    pub stage: String,
    #[serde(default)]
    pub founded: Option<i64>,
    #[serde(default)]
    pub team_size: Option<i64>,
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub looking_for: Vec<String>,
    #[serde(default)]
    pub contact: Option<Contact>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Who may apply to a program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Eligibility {
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub stages: Vec<String>,
}

/// A program hosted by a park.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Program {
    pub id: RecordId,
    pub park: ParkId,
    pub kind: String,
    pub title: String,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub seats: Option<i64>,
    #[serde(default)]
    pub starts: Option<String>,
    #[serde(default)]
    pub ends: Option<String>,
    #[serde(default)]
    pub benefits: Vec<String>,
    #[serde(default)]
    pub eligibility: Option<Eligibility>,
    #[serde(default = "default_open")]
    pub open: bool,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

fn default_open() -> bool {
    true
}

/// The host park's answer to an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    pub status: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub decided_at: Option<String>,
}

/// An application of a startup to another park's program, joined with the host's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Application {
    pub id: RecordId,
    pub park: ParkId,
    pub startup: RecordId,
    pub program: RecordId,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub withdrawn: bool,
    #[serde(default)]
    pub submitted_at: Option<String>,
    /// Derived: withdrawn, else the decision's status, else pending.
    #[serde(default = "pending")]
    pub status: String,
    #[serde(default)]
    pub decision: Option<Decision>,
}

fn pending() -> String {
    "pending".into()
}

impl Application {
    /// Joins the host park's decision and derives the status.
    pub fn join(&mut self, decision: Option<Decision>) {
        self.status = if self.withdrawn {
            "withdrawn".into()
        } else {
            decision.as_ref().map_or_else(pending, |d| d.status.clone())
        };
        self.decision = decision;
    }
}

/// One device of a park.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub key: DeviceKey,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub added_at: Option<String>,
}

/// A member park, as the federation document holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Park {
    pub id: ParkId,
    pub name: String,
    pub country: String,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub website: Option<String>,
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// Reads a stored record (JSON from [`record_from_automerge`]) into its typed view, adding the id and
/// park that the document structure holds rather than the record. A record that does not fit
/// its type (a park wrote a partial record by hand) reads as `None` and stays out of queries.
pub fn read_record<T: serde::de::DeserializeOwned>(id: &RecordId, mut stored: Value) -> Option<T> {
    let obj = stored.as_object_mut()?;
    obj.insert("id".into(), Value::String(id.to_string()));
    obj.insert("park".into(), Value::String(id.park().to_string()));
    serde_json::from_value(stored).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn startup() -> Value {
        json!({
            "name": "Qazaq Agro AI",
            "country": "KZ",
            "city": "Astana",
            "sectors": ["agritech", "ai"],
            "stage": "seed",
            "founded": 2021,
            "team_size": 12,
            "website": "https://qazaq-agro.example.kz",
            "summary": "Crop yield forecasts from satellite images.",
            "looking_for": ["investment", "market_entry"],
            "contact": {"name": "Aigerim", "email": "aigerim@qazaq-agro.example.kz"},
            "tags": ["satellite", "yield"]
        })
    }

    fn fields_of(err: FieldErrors) -> Vec<String> {
        err.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn accepts_a_complete_startup() {
        assert_eq!(
            validate_input(STARTUP_FIELDS, &startup(), Mode::Create, 2026),
            Ok(())
        );
    }

    #[test]
    fn names_each_invalid_field() {
        let cases: &[(&str, Value, &str)] = &[
            ("name", json!(""), "name"),
            ("name", json!("x".repeat(201)), "name"),
            ("country", json!("Kazakhstan"), "country"),
            ("country", json!("XX"), "country"),
            ("city", json!("c".repeat(101)), "city"),
            ("sectors", json!(["biotech"]), "sectors[0]"),
            ("sectors", json!([]), "sectors"),
            ("sectors", json!(["ai", "ai"]), "sectors"),
            (
                "sectors",
                json!(["ai", "edtech", "fintech", "gaming", "govtech", "other"]),
                "sectors",
            ),
            ("stage", json!("series_b"), "stage"),
            ("founded", json!(1989), "founded"),
            ("founded", json!(2027), "founded"),
            ("team_size", json!(0), "team_size"),
            ("team_size", json!(1.5), "team_size"),
            ("website", json!("ftp://x.kz"), "website"),
            ("website", json!("https://"), "website"),
            ("summary", json!("s".repeat(2001)), "summary"),
            ("looking_for", json!(["money"]), "looking_for[0]"),
            ("contact", json!({"email": "not-an-email"}), "contact.email"),
            ("contact", json!({"phone": "123"}), "contact.phone"),
            (
                "tags",
                json!((0..21).map(|i| format!("t{i}")).collect::<Vec<_>>()),
                "tags",
            ),
            ("tags", json!(["t".repeat(41)]), "tags[0]"),
            ("created_at", json!("2024-01-01T00:00:00Z"), "created_at"),
            ("colour", json!("blue"), "colour"),
        ];
        for (field, value, named) in cases {
            let mut input = startup();
            input[*field] = value.clone();
            let err = validate_input(STARTUP_FIELDS, &input, Mode::Create, 2026)
                .expect_err(&format!("{field} = {value} must be rejected"));
            assert_eq!(
                fields_of(err),
                vec![named.to_string()],
                "for {field} = {value}"
            );
        }
    }

    #[test]
    fn reports_every_bad_field_and_missing_required_ones() {
        let input = json!({"name": "", "country": "kz", "extra": 1});
        let err = validate_input(STARTUP_FIELDS, &input, Mode::Create, 2026).expect_err("bad");
        let mut fields = fields_of(err);
        fields.sort();
        assert_eq!(fields, ["country", "extra", "name", "sectors", "stage"]);
    }

    #[test]
    fn a_patch_needs_no_required_fields_but_cannot_null_them() {
        assert_eq!(
            validate_input(STARTUP_FIELDS, &json!({"city": null}), Mode::Patch, 2026),
            Ok(())
        );
        let err = validate_input(STARTUP_FIELDS, &json!({"name": null}), Mode::Patch, 2026)
            .expect_err("name is required");
        assert_eq!(fields_of(err), ["name"]);
    }

    #[test]
    fn programs_and_decisions_are_validated() {
        let program = json!({"kind": "residency", "title": "Digital Nomad IT residency",
            "seats": 20, "starts": "2026-03-01", "ends": "2026-09-01", "open": true,
            "eligibility": {"countries": ["KZ", "UZ"], "stages": ["mvp", "seed"]}});
        assert_eq!(
            validate_input(PROGRAM_FIELDS, &program, Mode::Create, 2026),
            Ok(())
        );
        let bad = json!({"kind": "party", "title": "x", "starts": "2026-13-01",
            "eligibility": {"countries": ["Kazakhstan"]}});
        let mut fields =
            fields_of(validate_input(PROGRAM_FIELDS, &bad, Mode::Create, 2026).expect_err("bad"));
        fields.sort();
        assert_eq!(fields, ["eligibility.countries[0]", "kind", "starts"]);
        let err = validate_input(
            DECISION_FIELDS,
            &json!({"status": "maybe"}),
            Mode::Create,
            2026,
        )
        .expect_err("bad status");
        assert_eq!(fields_of(err), ["status"]);
    }

    #[test]
    fn records_round_trip_through_automerge_values() {
        let value = startup();
        let stored = record_to_automerge(STARTUP_FIELDS, value.as_object().expect("object"));
        let back = record_from_automerge(STARTUP_FIELDS, &stored);
        assert_eq!(back, value);
        let id: RecordId = "kz-astana-hub/qazaq-agro".parse().expect("valid id");
        let typed: Startup = read_record(&id, back).expect("a complete startup reads");
        assert_eq!(typed.park.as_str(), "kz-astana-hub");
        assert_eq!(typed.sectors, ["agritech", "ai"]);
        assert_eq!(
            typed.contact.and_then(|c| c.email).as_deref(),
            Some("aigerim@qazaq-agro.example.kz")
        );
    }

    #[test]
    fn application_status_is_derived() {
        let mut app = Application {
            id: "uz-it-park/a1".parse().expect("id"),
            park: "uz-it-park".parse().expect("park"),
            startup: "uz-it-park/s1".parse().expect("id"),
            program: "kz-astana-hub/p1".parse().expect("id"),
            message: None,
            withdrawn: false,
            submitted_at: None,
            status: pending(),
            decision: None,
        };
        app.join(None);
        assert_eq!(app.status, "pending");
        let accepted = Decision {
            status: "accepted".into(),
            note: None,
            decided_at: None,
        };
        app.join(Some(accepted.clone()));
        assert_eq!(app.status, "accepted");
        app.withdrawn = true;
        app.join(Some(accepted));
        assert_eq!(app.status, "withdrawn");
    }

    #[test]
    fn list_fields_are_checked_as_stored_json() {
        let sectors = &STARTUP_FIELDS[3].kind;
        assert!(check_scalar(sectors, Scalar::Str(r#"["ai","fintech"]"#), None).is_ok());
        for bad in [r#"["biotech"]"#, "[]", "ai", r#"{"a":1}"#] {
            assert!(
                check_scalar(sectors, Scalar::Str(bad), None).is_err(),
                "{bad} must be rejected"
            );
        }
        assert!(check_scalar(sectors, Scalar::Int(3), None).is_err());
    }

    #[test]
    fn country_list_is_iso_3166_alpha_2() {
        assert_eq!(COUNTRIES.split(' ').count(), 249);
        for c in ["KZ", "UZ", "KG", "AZ", "TR", "US"] {
            assert!(is_country(c));
        }
        assert!(!is_country("kz") && !is_country("XK") && !is_country("KAZ"));
    }
}
