//! The query index over every ledger: startups, programs, applications joined with their
//! decisions, and the member parks. The replica updates it record by record as changes apply;
//! queries never touch the Automerge documents.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kervan_protocol::records::{Application, Decision, Park, Program, Startup};
use kervan_protocol::{ParkId, RecordId};
use serde::Serialize;

/// The largest page a query answers.
pub const MAX_LIMIT: usize = 500;
/// The page size when the caller names none.
pub const DEFAULT_LIMIT: usize = 50;

/// One page of a list, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// How a list is ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// By record id (the default): stable under concurrent inserts of other parks.
    #[default]
    Id,
    /// By name (startups) or title (programs), case-insensitive, then id.
    Name,
}

impl std::str::FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "id" => Ok(Sort::Id),
            "name" | "title" => Ok(Sort::Name),
            _ => Err(format!("expected sort to be id or name, found {s:?}")),
        }
    }
}

/// Why a query's parameters are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("cursor is not one this node issued")]
    Cursor,
    #[error("limit must be 1 to {MAX_LIMIT}, found {0}")]
    Limit(usize),
}

/// Filters shared by the startup and program lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub park: Option<ParkId>,
    pub country: Option<String>,
    pub sector: Option<String>,
    pub stage: Option<String>,
    /// Program kind.
    pub kind: Option<String>,
    /// Case-insensitive text search over name or title, summary and tags or benefits.
    pub q: Option<String>,
    pub sort: Sort,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// Filters of the application list.
#[derive(Debug, Clone, Default)]
pub struct AppFilter {
    /// The applicant (the startup's home park).
    pub park: Option<ParkId>,
    pub program: Option<RecordId>,
    /// Applications to programs hosted by this park.
    pub host: Option<ParkId>,
    pub status: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    record: T,
    /// Lower-cased text the `q` filter searches.
    text: String,
    /// Lower-cased name or title: the `Name` sort key.
    name: String,
}

#[derive(Debug)]
struct Table<T> {
    by_id: BTreeMap<RecordId, Entry<T>>,
    by_name: BTreeSet<(String, RecordId)>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_name: BTreeSet::new(),
        }
    }
}

impl<T: Clone> Table<T> {
    fn set(&mut self, id: RecordId, entry: Option<Entry<T>>) {
        if let Some(old) = self.by_id.remove(&id) {
            self.by_name.remove(&(old.name, id.clone()));
        }
        if let Some(e) = entry {
            self.by_name.insert((e.name.clone(), id.clone()));
            self.by_id.insert(id, e);
        }
    }

    fn page(&self, f: &Filter, keep: impl Fn(&T) -> bool) -> Result<Page<T>, QueryError> {
        let limit = limit_of(f.limit)?;
        let q = f.q.as_deref().map(str::to_lowercase);
        let matches =
            |e: &Entry<T>| keep(&e.record) && q.as_ref().is_none_or(|q| e.text.contains(q));
        let mut items = Vec::with_capacity(limit.min(64));
        let mut last = None;
        let mut more = false;
        match f.sort {
            Sort::Id => {
                let start = match &f.cursor {
                    Some(c) => std::ops::Bound::Excluded(decode_cursor(c)?.1),
                    None => std::ops::Bound::Unbounded,
                };
                for (id, e) in self.by_id.range((start, std::ops::Bound::Unbounded)) {
                    if !matches(e) {
                        continue;
                    }
                    if items.len() == limit {
                        more = true;
                        break;
                    }
                    items.push(e.record.clone());
                    last = Some((String::new(), id.clone()));
                }
            }
            Sort::Name => {
                let start = match &f.cursor {
                    Some(c) => std::ops::Bound::Excluded(decode_cursor(c)?),
                    None => std::ops::Bound::Unbounded,
                };
                for key in self.by_name.range((start, std::ops::Bound::Unbounded)) {
                    let Some(e) = self.by_id.get(&key.1) else {
                        continue;
                    };
                    if !matches(e) {
                        continue;
                    }
                    if items.len() == limit {
                        more = true;
                        break;
                    }
                    items.push(e.record.clone());
                    last = Some(key.clone());
                }
            }
        }
        Ok(Page {
            items,
            next_cursor: last.filter(|_| more).map(|(n, id)| encode_cursor(&n, &id)),
        })
    }
}

/// An index entry: the record with the lower-cased text `q` searches (name or title, summary,
/// tags or benefits) and its name sort key.
fn entry<T>(name: &str, summary: Option<&str>, words: &[String], record: T) -> Entry<T> {
    Entry {
        text: format!("{name}\n{}\n{}", summary.unwrap_or(""), words.join("\n")).to_lowercase(),
        name: name.to_lowercase(),
        record,
    }
}

fn limit_of(limit: Option<usize>) -> Result<usize, QueryError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(QueryError::Limit(n)),
    }
}

/// Cursors are opaque to callers: the sort key and the last id, hex-encoded.
fn encode_cursor(name: &str, id: &RecordId) -> String {
    hex::encode(format!("{name}\u{0}{id}"))
}

fn decode_cursor(c: &str) -> Result<(String, RecordId), QueryError> {
    let bytes = hex::decode(c).map_err(|_| QueryError::Cursor)?;
    let s = String::from_utf8(bytes).map_err(|_| QueryError::Cursor)?;
    let (name, id) = s.split_once('\u{0}').ok_or(QueryError::Cursor)?;
    Ok((name.to_owned(), id.parse().map_err(|_| QueryError::Cursor)?))
}

/// The index itself.
#[derive(Debug, Default)]
pub struct Index {
    startups: Table<Startup>,
    programs: Table<Program>,
    /// Applications as their park stored them, not yet joined.
    applications: BTreeMap<RecordId, Application>,
    /// Decisions by application id, by the park that wrote them. Only the program's host
    /// park's decision counts; the others are kept so a late program fix needs no re-read.
    decisions: HashMap<RecordId, BTreeMap<ParkId, Decision>>,
    parks: BTreeMap<ParkId, Park>,
}

impl Index {
    pub fn set_startup(&mut self, id: RecordId, s: Option<Startup>) {
        let entry = s.map(|s| entry(&s.name, s.summary.as_deref(), &s.tags, s.clone()));
        self.startups.set(id, entry);
    }

    pub fn set_program(&mut self, id: RecordId, p: Option<Program>) {
        let entry = p.map(|p| entry(&p.title, p.summary.as_deref(), &p.benefits, p.clone()));
        self.programs.set(id, entry);
    }

    pub fn set_application(&mut self, id: RecordId, a: Option<Application>) {
        match a {
            Some(a) => self.applications.insert(id, a),
            None => self.applications.remove(&id),
        };
    }

    pub fn set_decision(&mut self, app: RecordId, by: ParkId, d: Option<Decision>) {
        let entry = self.decisions.entry(app.clone()).or_default();
        match d {
            Some(d) => entry.insert(by, d),
            None => entry.remove(&by),
        };
        if entry.is_empty() {
            self.decisions.remove(&app);
        }
    }

    pub fn set_park(&mut self, id: ParkId, p: Option<Park>) {
        match p {
            Some(p) => self.parks.insert(id, p),
            None => self.parks.remove(&id),
        };
    }

    pub fn startup(&self, id: &RecordId) -> Option<&Startup> {
        self.startups.by_id.get(id).map(|e| &e.record)
    }

    pub fn program(&self, id: &RecordId) -> Option<&Program> {
        self.programs.by_id.get(id).map(|e| &e.record)
    }

    /// An application joined with its host park's decision.
    pub fn application(&self, id: &RecordId) -> Option<Application> {
        self.applications.get(id).map(|a| self.joined(a))
    }

    fn joined(&self, a: &Application) -> Application {
        let decision = self
            .decisions
            .get(&a.id)
            .and_then(|by| by.get(a.program.park()))
            .cloned();
        let mut a = a.clone();
        a.join(decision);
        a
    }

    pub fn parks(&self) -> Vec<Park> {
        self.parks.values().cloned().collect()
    }

    pub fn park(&self, id: &ParkId) -> Option<&Park> {
        self.parks.get(id)
    }

    pub fn startups(&self, f: &Filter) -> Result<Page<Startup>, QueryError> {
        self.startups.page(f, |s| {
            f.park.as_ref().is_none_or(|p| &s.park == p)
                && f.country
                    .as_ref()
                    .is_none_or(|c| s.country.eq_ignore_ascii_case(c))
                && f.sector.as_ref().is_none_or(|x| s.sectors.contains(x))
                && f.stage.as_ref().is_none_or(|x| &s.stage == x)
        })
    }

    pub fn programs(&self, f: &Filter) -> Result<Page<Program>, QueryError> {
        self.programs.page(f, |p| {
            f.park.as_ref().is_none_or(|x| &p.park == x)
                && f.kind.as_ref().is_none_or(|x| &p.kind == x)
                && f.country.as_ref().is_none_or(|c| {
                    p.eligibility
                        .as_ref()
                        .is_none_or(|e| e.countries.is_empty() || e.countries.contains(c))
                })
                && f.stage.as_ref().is_none_or(|s| {
                    p.eligibility
                        .as_ref()
                        .is_none_or(|e| e.stages.is_empty() || e.stages.contains(s))
                })
        })
    }

    pub fn applications(&self, f: &AppFilter) -> Result<Page<Application>, QueryError> {
        let limit = limit_of(f.limit)?;
        let start = match &f.cursor {
            Some(c) => std::ops::Bound::Excluded(decode_cursor(c)?.1),
            None => std::ops::Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut more = false;
        for (_, a) in self.applications.range((start, std::ops::Bound::Unbounded)) {
            if f.park.as_ref().is_some_and(|p| &a.park != p)
                || f.program.as_ref().is_some_and(|p| &a.program != p)
                || f.host.as_ref().is_some_and(|h| a.program.park() != h)
            {
                continue;
            }
            let joined = self.joined(a);
            if f.status.as_ref().is_some_and(|s| &joined.status != s) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(joined);
        }
        let next_cursor = items
            .last()
            .filter(|_| more)
            .map(|a: &Application| encode_cursor("", &a.id));
        Ok(Page { items, next_cursor })
    }

    /// Record counts by kind, for status and metrics.
    pub fn counts(&self) -> Counts {
        Counts {
            parks: self.parks.len(),
            startups: self.startups.by_id.len(),
            programs: self.programs.by_id.len(),
            applications: self.applications.len(),
            decisions: self.decisions.values().map(BTreeMap::len).sum(),
        }
    }
}

/// How many records of each kind the index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub parks: usize,
    pub startups: usize,
    pub programs: usize,
    pub applications: usize,
    pub decisions: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(park: &str, local: &str, name: &str, country: &str, sector: &str) -> Startup {
        Startup {
            id: format!("{park}/{local}").parse().expect("id"),
            park: park.parse().expect("park"),
            name: name.into(),
            country: country.into(),
            city: None,
            sectors: vec![sector.into()],
            stage: "seed".into(),
            founded: None,
            team_size: None,
            website: None,
            summary: Some(format!("{name} summary")),
            looking_for: vec![],
            contact: None,
            tags: vec!["Satellite".into()],
            created_at: None,
            updated_at: None,
        }
    }

    fn index(n: usize) -> Index {
        let mut index = Index::default();
        for i in 0..n {
            let park = ["kz-astana-hub", "uz-it-park", "kg-htp"][i % 3];
            let country = ["KZ", "UZ", "KG"][i % 3];
            let s = startup(
                park,
                &format!("s{i:04}"),
                &format!("Startup {}", n - i),
                country,
                "ai",
            );
            index.set_startup(s.id.clone(), Some(s));
        }
        index
    }

    #[test]
    fn paging_returns_every_record_exactly_once_in_both_orders() {
        let index = index(203);
        for sort in [Sort::Id, Sort::Name] {
            let mut seen = Vec::new();
            let mut cursor = None;
            for _ in 0..100 {
                let f = Filter {
                    limit: Some(20),
                    cursor: cursor.clone(),
                    sort,
                    ..Filter::default()
                };
                let page = index.startups(&f).expect("page");
                seen.extend(page.items.into_iter().map(|s| s.id));
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!((seen.len(), unique.len()), (203, 203), "{sort:?}");
        }
    }

    #[test]
    fn filters_and_text_search_combine() {
        let index = index(30);
        let f = Filter {
            country: Some("kz".into()),
            q: Some("SATELLITE".into()),
            limit: Some(500),
            ..Filter::default()
        };
        let page = index.startups(&f).expect("page");
        assert_eq!(page.items.len(), 10);
        assert!(page.items.iter().all(|s| s.country == "KZ"));
        assert!(page.next_cursor.is_none());
        let none = Filter {
            q: Some("no such words".into()),
            ..Filter::default()
        };
        assert!(index.startups(&none).expect("page").items.is_empty());
    }

    #[test]
    fn only_the_host_parks_decision_counts() {
        let mut index = Index::default();
        let app = Application {
            id: "uz-it-park/a1".parse().expect("id"),
            park: "uz-it-park".parse().expect("park"),
            startup: "uz-it-park/s1".parse().expect("id"),
            program: "kz-astana-hub/p1".parse().expect("id"),
            message: None,
            withdrawn: false,
            submitted_at: None,
            status: "pending".into(),
            decision: None,
        };
        index.set_application(app.id.clone(), Some(app.clone()));
        let decision = |s: &str| Decision {
            status: s.into(),
            note: None,
            decided_at: None,
        };
        index.set_decision(
            app.id.clone(),
            "kg-htp".parse().expect("park"),
            Some(decision("accepted")),
        );
        assert_eq!(index.application(&app.id).expect("app").status, "pending");
        index.set_decision(
            app.id.clone(),
            "kz-astana-hub".parse().expect("park"),
            Some(decision("waitlisted")),
        );
        assert_eq!(
            index.application(&app.id).expect("app").status,
            "waitlisted"
        );
        let f = AppFilter {
            status: Some("waitlisted".into()),
            ..AppFilter::default()
        };
        assert_eq!(index.applications(&f).expect("page").items.len(), 1);
    }

    #[test]
    fn bad_cursors_and_limits_are_errors() {
        let index = index(3);
        let f = Filter {
            cursor: Some("zz".into()),
            ..Filter::default()
        };
        assert_eq!(index.startups(&f).err(), Some(QueryError::Cursor));
        let f = Filter {
            limit: Some(501),
            ..Filter::default()
        };
        assert_eq!(index.startups(&f).err(), Some(QueryError::Limit(501)));
    }
}
