//! The query index over every ledger: startups, programs, applications joined with their
//! decisions, and the member parks. The replica updates it record by record as changes apply;
//! queries never touch the Automerge documents.
//!
//! Each table keeps its records once, in a paged slab addressed by a `u32` slot, with two orders
//! of slots (by id; by lower-cased name, then id) kept as chunked sorted vectors that also give a
//! slot's rank in constant time. Beside them are posting sets per filter value (a sorted list
//! while sparse, a bitmap once dense): startups by park, country (ASCII lower-cased), each sector
//! and stage; programs by park and kind; applications by applicant park, program, host park and
//! joined status. Startups and programs also have a word index: every alphanumeric run of their
//! lower-cased search text, with the records whose text holds it. The search text itself is not
//! kept: when `q` needs the exact substring test, a candidate's text is rebuilt from its record.
//!
//! A query intersects the sets of its filters (for `q`, per alphanumeric run of the query, the
//! union of the words that can hold it) into candidates. A few candidates are ordered by rank and
//! taken from the cursor on; many are a bitmap tested while walking the order from the cursor.
//! Either way a record is kept only if the full predicate holds (and `q` as a substring of its
//! text, unless the word index answered `q` exactly), so results, their order and the cursors
//! are those of a plain filtered scan in that order.
//!
//! A record's id must be the key it is set under, as `records::read_record` makes it.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use kervan_protocol::records::{Application, Decision, Park, Program, Startup};
use kervan_protocol::{ParkId, RecordId};
use serde::{Deserialize, Serialize};

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

/// A record's place in its table's slab.
type Slot = u32;

/// What the tables need of a record. A record's `id` is the key it is set under
/// (`records::read_record` writes the key into the record).
trait Record: Clone {
    /// Whether the table keeps a name order and a word index (startups and programs).
    const SEARCHED: bool;
    fn id(&self) -> &RecordId;
    /// The text `q` searches: name or title, summary, tags or benefits.
    fn text(&self) -> (&str, Option<&str>, &[String]);
    /// The posting sets the record is in: (field, value).
    fn keys(&self) -> Vec<(usize, Cow<'_, str>)>;
}

const S_PARK: usize = 0;
const S_COUNTRY: usize = 1;
const S_SECTOR: usize = 2;
const S_STAGE: usize = 3;
const P_PARK: usize = 0;
const P_KIND: usize = 1;
const A_PARK: usize = 0;
const A_PROGRAM: usize = 1;
const A_HOST: usize = 2;

/// The country filter ignores ASCII case: its posting sets are keyed by the lower-cased value.
fn country_key(c: &str) -> Cow<'_, str> {
    if c.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(c.to_ascii_lowercase())
    } else {
        Cow::Borrowed(c)
    }
}

impl Record for Startup {
    const SEARCHED: bool = true;
    fn id(&self) -> &RecordId {
        &self.id
    }
    fn text(&self) -> (&str, Option<&str>, &[String]) {
        (&self.name, self.summary.as_deref(), &self.tags)
    }
    fn keys(&self) -> Vec<(usize, Cow<'_, str>)> {
        let mut keys = vec![
            (S_PARK, Cow::Borrowed(self.park.as_str())),
            (S_COUNTRY, country_key(&self.country)),
            (S_STAGE, Cow::Borrowed(self.stage.as_str())),
        ];
        keys.extend(
            self.sectors
                .iter()
                .map(|s| (S_SECTOR, Cow::Borrowed(s.as_str()))),
        );
        keys
    }
}

impl Record for Program {
    const SEARCHED: bool = true;
    fn id(&self) -> &RecordId {
        &self.id
    }
    fn text(&self) -> (&str, Option<&str>, &[String]) {
        (&self.title, self.summary.as_deref(), &self.benefits)
    }
    fn keys(&self) -> Vec<(usize, Cow<'_, str>)> {
        vec![
            (P_PARK, Cow::Borrowed(self.park.as_str())),
            (P_KIND, Cow::Borrowed(self.kind.as_str())),
        ]
    }
}

impl Record for Application {
    const SEARCHED: bool = false;
    fn id(&self) -> &RecordId {
        &self.id
    }
    fn text(&self) -> (&str, Option<&str>, &[String]) {
        ("", None, &[])
    }
    fn keys(&self) -> Vec<(usize, Cow<'_, str>)> {
        vec![
            (A_PARK, Cow::Borrowed(self.park.as_str())),
            (A_PROGRAM, Cow::Owned(self.program.to_string())),
            (A_HOST, Cow::Borrowed(self.program.park().as_str())),
        ]
    }
}

/// Writes the lower-cased text `q` searches into `buf`: exactly
/// `format!("{name}\n{summary}\n{}", words.join("\n")).to_lowercase()`.
fn search_text(r: &impl Record, buf: &mut String) {
    let (name, summary, words) = r.text();
    buf.clear();
    buf.push_str(name);
    buf.push('\n');
    buf.push_str(summary.unwrap_or(""));
    buf.push('\n');
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            buf.push('\n');
        }
        buf.push_str(w);
    }
    if buf.is_ascii() {
        buf.make_ascii_lowercase();
    } else {
        *buf = buf.to_lowercase();
    }
}

/// The distinct words of a lower-cased text, sorted: its maximal runs of alphanumeric chars.
fn words_of(text: &str) -> Vec<&str> {
    let mut words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words.sort_unstable();
    words.dedup();
    words
}

/// An alphanumeric run of the lower-cased query. In a text that contains the query, the run lies
/// inside one word; it starts that word when the query has a char before it (which is not
/// alphanumeric, so neither is the text's), and ends it when the query has one after it.
#[derive(Debug, Clone, Copy)]
struct Run<'q> {
    text: &'q str,
    starts_word: bool,
    ends_word: bool,
}

fn runs(q: &str) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in q.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(Run {
                    text: &q[s..i],
                    starts_word: s > 0,
                    ends_word: true,
                });
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(Run {
            text: &q[s..],
            starts_word: s > 0,
            ends_word: false,
        });
    }
    out
}

fn insert_sorted(list: &mut Vec<Slot>, s: Slot) {
    if list.last().is_none_or(|&l| l < s) {
        list.push(s);
    } else if let Err(i) = list.binary_search(&s) {
        list.insert(i, s);
    }
}

fn has(bits: &[u64], s: Slot) -> bool {
    bits.get(s as usize / 64)
        .is_some_and(|w| (w >> (s % 64)) & 1 == 1)
}

/// The slots of a bitmap, in order.
fn ones(bits: &[u64]) -> impl Iterator<Item = Slot> + '_ {
    bits.iter().enumerate().flat_map(|(i, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            (w != 0).then(|| {
                let b = w.trailing_zeros();
                w &= w - 1;
                (i * 64) as Slot + b
            })
        })
    })
}

/// A bitmap of `slots`, all below `n`.
fn bitmap(slots: &[Slot], n: usize) -> Vec<u64> {
    let mut bits = vec![0; n.div_ceil(64)];
    for &s in slots {
        bits[s as usize / 64] |= 1 << (s % 64);
    }
    bits
}

/// A set of slots: a sorted list while sparse, a bitmap once dense (more than one slot in 16
/// below its largest; back to a list under one in 64). Dense sets intersect word by word.
#[derive(Debug)]
enum Set {
    List(Vec<Slot>),
    Bits { bits: Vec<u64>, len: usize },
}

impl Default for Set {
    fn default() -> Self {
        Set::List(Vec::new())
    }
}

impl Set {
    fn len(&self) -> usize {
        match self {
            Set::List(l) => l.len(),
            Set::Bits { len, .. } => *len,
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn view(&self) -> View<'_> {
        match self {
            Set::List(l) => View::List(l),
            Set::Bits { bits, .. } => View::Bits(bits),
        }
    }

    fn contains(&self, s: Slot) -> bool {
        match self {
            Set::List(l) => l.binary_search(&s).is_ok(),
            Set::Bits { bits, .. } => has(bits, s),
        }
    }

    fn insert(&mut self, s: Slot) {
        match self {
            Set::List(l) => {
                insert_sorted(l, s);
                let words = l.last().map_or(0, |&m| m as usize / 64 + 1);
                if l.len() >= 64 && l.len() > 4 * words {
                    let bits = bitmap(l, words * 64);
                    *self = Set::Bits { bits, len: l.len() };
                }
            }
            Set::Bits { bits, len } => {
                let (w, b) = (s as usize / 64, s % 64);
                if bits.len() <= w {
                    bits.resize(w + 1, 0);
                }
                if (bits[w] >> b) & 1 == 0 {
                    bits[w] |= 1 << b;
                    *len += 1;
                }
                self.thin();
            }
        }
    }

    fn remove(&mut self, s: Slot) -> bool {
        let removed = match self {
            Set::List(l) => match l.binary_search(&s) {
                Ok(i) => {
                    l.remove(i);
                    true
                }
                Err(_) => false,
            },
            Set::Bits { bits, len } => {
                if has(bits, s) {
                    bits[s as usize / 64] &= !(1 << (s % 64));
                    *len -= 1;
                    while bits.last() == Some(&0) {
                        bits.pop();
                    }
                    true
                } else {
                    false
                }
            }
        };
        self.thin();
        removed
    }

    /// Turns a bitmap that has become sparse back into a list.
    fn thin(&mut self) {
        if let Set::Bits { bits, len } = self {
            if *len < bits.len() {
                *self = Set::List(ones(bits).collect());
            }
        }
    }
}

/// A borrowed set of slots.
#[derive(Debug, Clone, Copy)]
enum View<'a> {
    List(&'a [Slot]),
    Bits(&'a [u64]),
}

/// A query's candidates: borrowed from one set, or computed.
#[derive(Debug)]
enum Cand<'a> {
    List(Cow<'a, [Slot]>),
    Bits(Cow<'a, [u64]>),
}

impl<'a> Cand<'a> {
    fn of(v: View<'a>) -> Self {
        match v {
            View::List(l) => Cand::List(Cow::Borrowed(l)),
            View::Bits(b) => Cand::Bits(Cow::Borrowed(b)),
        }
    }

    fn view(&self) -> View<'_> {
        match self {
            Cand::List(l) => View::List(l),
            Cand::Bits(b) => View::Bits(b),
        }
    }

    fn len(&self) -> usize {
        match self {
            Cand::List(l) => l.len(),
            Cand::Bits(b) => b.iter().map(|w| w.count_ones() as usize).sum(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Cand::List(l) => l.is_empty(),
            Cand::Bits(b) => b.iter().all(|&w| w == 0),
        }
    }

    fn slots(&self) -> Box<dyn Iterator<Item = Slot> + '_> {
        match self {
            Cand::List(l) => Box::new(l.iter().copied()),
            Cand::Bits(b) => Box::new(ones(b)),
        }
    }
}

/// The slots per value of one field.
#[derive(Debug)]
struct Postings<K> {
    map: HashMap<K, Set>,
}

impl<K> Default for Postings<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Postings<K> {
    fn get<Q>(&self, k: &Q) -> Option<&Set>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    fn add<Q>(&mut self, k: &Q, s: Slot)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.map.get_mut(k) {
            Some(set) => set.insert(s),
            None => {
                self.map.insert(k.to_owned(), Set::List(vec![s]));
            }
        }
    }

    fn remove<Q>(&mut self, k: &Q, s: Slot)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(set) = self.map.get_mut(k) {
            set.remove(s);
            if set.is_empty() {
                self.map.remove(k);
            }
        }
    }
}

/// Which words of the vocabulary can hold a run of the query.
#[derive(Debug)]
enum Hits<'a> {
    /// The sets of those words (none: no record matches) and their total size.
    Sets(Vec<&'a Set>, usize),
    /// More postings than were asked for: not worth materialising.
    Many,
}

/// The word index: lower-cased alphanumeric runs of the search text, each with its records.
#[derive(Debug, Default)]
struct Words {
    ids: HashMap<Box<str>, u32>,
    /// Records per word id; empty once a word's last record left.
    lists: Vec<Set>,
    /// Every word, in id order, each preceded and followed by `\n` (`"\nw0\nw1\n"`), so that one
    /// substring search finds the words that contain, start or end with a run.
    text: String,
    /// Where each word starts in `text`.
    starts: Vec<u32>,
    /// Words with an empty list.
    dead: usize,
}

impl Words {
    fn add(&mut self, w: &str, s: Slot) {
        let id = match self.ids.get(w) {
            Some(&id) => id,
            None => {
                if self.text.is_empty() {
                    self.text.push('\n');
                }
                let id = u32::try_from(self.lists.len()).expect("fewer than 2^32 words");
                self.starts
                    .push(u32::try_from(self.text.len()).expect("vocabulary under 4 GiB"));
                self.text.push_str(w);
                self.text.push('\n');
                self.lists.push(Set::default());
                self.ids.insert(w.into(), id);
                self.dead += 1;
                id
            }
        };
        let list = &mut self.lists[id as usize];
        if list.is_empty() {
            self.dead -= 1;
        }
        list.insert(s);
    }

    fn remove(&mut self, w: &str, s: Slot) {
        if let Some(&id) = self.ids.get(w) {
            let list = &mut self.lists[id as usize];
            if list.remove(s) && list.is_empty() {
                self.dead += 1;
            }
        }
    }

    /// Drops the words without records once they are most of the vocabulary.
    fn compact_if_sparse(&mut self) {
        if self.dead < 4096 || self.dead * 2 < self.lists.len() {
            return;
        }
        let lists = std::mem::take(&mut self.lists);
        let text = std::mem::take(&mut self.text);
        let starts = std::mem::take(&mut self.starts);
        self.ids.clear();
        self.dead = 0;
        for (i, list) in lists.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let start = starts[i] as usize;
            let end = starts.get(i + 1).map_or(text.len(), |&s| s as usize) - 1;
            let w = &text[start..end];
            if self.text.is_empty() {
                self.text.push('\n');
            }
            let id = u32::try_from(self.lists.len()).expect("fewer than 2^32 words");
            self.starts
                .push(u32::try_from(self.text.len()).expect("vocabulary under 4 GiB"));
            self.text.push_str(w);
            self.text.push('\n');
            self.lists.push(list);
            self.ids.insert(w.into(), id);
        }
        self.ids.shrink_to_fit();
    }

    /// The words that can hold `run`, up to `cap` postings in all.
    fn hits(&self, run: &Run<'_>, cap: usize) -> Hits<'_> {
        if run.starts_word && run.ends_word {
            let sets: Vec<&Set> = self
                .ids
                .get(run.text)
                .map(|&id| &self.lists[id as usize])
                .filter(|l| !l.is_empty())
                .into_iter()
                .collect();
            let total = sets.iter().map(|l| l.len()).sum();
            return Hits::Sets(sets, total);
        }
        let pattern = match (run.starts_word, run.ends_word) {
            (true, _) => Cow::Owned(format!("\n{}", run.text)),
            (_, true) => Cow::Owned(format!("{}\n", run.text)),
            _ => Cow::Borrowed(run.text),
        };
        let mut lists = Vec::new();
        let mut total = 0;
        let mut from = 0;
        while let Some(p) = self.text[from..].find(&*pattern) {
            let at = from + p + usize::from(run.starts_word);
            let w = self.starts.partition_point(|&s| s as usize <= at) - 1;
            let list = &self.lists[w];
            if !list.is_empty() {
                total += list.len();
                if total > cap {
                    return Hits::Many;
                }
                lists.push(list);
            }
            // Go on from the `\n` that ends this word.
            from = self
                .starts
                .get(w + 1)
                .map_or(self.text.len(), |&s| s as usize - 1);
        }
        Hits::Sets(lists, total)
    }
}

/// The posting lists of a table.
#[derive(Debug, Default)]
struct Lists {
    fields: Vec<Postings<String>>,
    words: Words,
}

impl Lists {
    fn get(&self, field: usize, key: &str) -> Option<&Set> {
        self.fields.get(field).and_then(|p| p.get(key))
    }

    fn field(&mut self, field: usize) -> &mut Postings<String> {
        if self.fields.len() <= field {
            self.fields.resize_with(field + 1, Postings::default);
        }
        &mut self.fields[field]
    }

    /// Moves `slot` from the lists of `old` to those of `new`.
    fn change<T: Record>(&mut self, slot: Slot, old: Option<&T>, new: Option<&T>) {
        let old_keys = old.map(T::keys).unwrap_or_default();
        let new_keys = new.map(T::keys).unwrap_or_default();
        for k in &old_keys {
            if !new_keys.contains(k) {
                self.field(k.0).remove(k.1.as_ref(), slot);
            }
        }
        for k in &new_keys {
            if !old_keys.contains(k) {
                self.field(k.0).add(k.1.as_ref(), slot);
            }
        }
        if !T::SEARCHED {
            return;
        }
        if old.zip(new).is_some_and(|(a, b)| a.text() == b.text()) {
            return;
        }
        let (mut a, mut b) = (String::new(), String::new());
        if let Some(r) = old {
            search_text(r, &mut a);
        }
        if let Some(r) = new {
            search_text(r, &mut b);
        }
        let (old_words, new_words) = (words_of(&a), words_of(&b));
        let (mut i, mut j) = (0, 0);
        while i < old_words.len() || j < new_words.len() {
            match (old_words.get(i), new_words.get(j)) {
                (Some(o), Some(n)) if o == n => {
                    i += 1;
                    j += 1;
                }
                (Some(o), n) if n.is_none_or(|n| o < n) => {
                    self.words.remove(o, slot);
                    i += 1;
                }
                (_, Some(n)) => {
                    self.words.add(n, slot);
                    j += 1;
                }
                (_, None) => break,
            }
        }
        self.words.compact_if_sparse();
    }
}

/// Slots in a total order, as a list of sorted chunks, with each slot's position kept so that its
/// rank in the whole order is one addition.
#[derive(Debug, Default)]
struct Order {
    /// Chunk ids, in order; every chunk in it is non-empty.
    seq: Vec<u32>,
    /// Chunks by id.
    chunks: Vec<Vec<Slot>>,
    /// The rank of each chunk's first slot, by chunk id.
    start: Vec<u32>,
    /// Chunk ids out of `seq`, for reuse.
    spare: Vec<u32>,
    /// Each slot's chunk id and index in that chunk.
    at: Vec<(u32, u32)>,
    len: u32,
}

/// Chunks split in two when they reach twice this length.
const CHUNK: usize = 512;

/// A batch of records is merged into an order (see [`Order::merge`]) when it is at least
/// 1 / this of the order's length, so each record costs a bounded share of the merge; a
/// smaller batch is inserted one record at a time.
const MERGE_AT_LEAST: usize = 8;

/// A position in an [`Order`]: index into `seq`, index into that chunk.
type Pos = (usize, usize);

impl Order {
    /// The position of the first slot for which `before` is false (`before` holds of a prefix).
    fn seek(&self, before: impl Fn(Slot) -> bool) -> Pos {
        let k = self
            .seq
            .partition_point(|&c| self.chunks[c as usize].last().is_some_and(|&s| before(s)));
        let p = self.seq.get(k).map_or(0, |&c| {
            self.chunks[c as usize].partition_point(|&s| before(s))
        });
        (k, p)
    }

    fn get(&self, (k, p): Pos) -> Option<Slot> {
        let c = *self.seq.get(k)?;
        self.chunks[c as usize].get(p).copied()
    }

    fn rank_at(&self, (k, p): Pos) -> u32 {
        self.seq
            .get(k)
            .map_or(self.len, |&c| self.start[c as usize] + p as u32)
    }

    fn rank(&self, s: Slot) -> u32 {
        let (c, i) = self.at[s as usize];
        self.start[c as usize] + i
    }

    fn iter_from(&self, (k, p): Pos) -> impl Iterator<Item = Slot> + '_ {
        self.seq
            .iter()
            .skip(k)
            .enumerate()
            .flat_map(move |(n, &c)| {
                let chunk = &self.chunks[c as usize];
                chunk[if n == 0 { p.min(chunk.len()) } else { 0 }..]
                    .iter()
                    .copied()
            })
    }

    fn new_chunk(&mut self, slots: Vec<Slot>) -> u32 {
        match self.spare.pop() {
            Some(c) => {
                self.chunks[c as usize] = slots;
                c
            }
            None => {
                self.chunks.push(slots);
                self.start.push(0);
                u32::try_from(self.chunks.len() - 1).expect("fewer than 2^32 chunks")
            }
        }
    }

    /// Re-records where the slots of chunk `c` from index `from` on are.
    fn place(&mut self, c: u32, from: usize) {
        for (i, &s) in self.chunks[c as usize].iter().enumerate().skip(from) {
            self.at[s as usize] = (c, i as u32);
        }
    }

    /// Inserts `s`, which is not in the order, before the first slot for which `before` is false.
    fn insert(&mut self, s: Slot, before: impl Fn(Slot) -> bool) {
        let (mut k, mut p) = self.seek(before);
        if self.at.len() <= s as usize {
            self.at.resize(s as usize + 1, (0, 0));
        }
        if self.seq.is_empty() {
            let c = self.new_chunk(Vec::with_capacity(2 * CHUNK));
            self.start[c as usize] = 0;
            self.seq.push(c);
            (k, p) = (0, 0);
        } else if k == self.seq.len() {
            k -= 1;
            p = self.chunks[self.seq[k] as usize].len();
        }
        let c = self.seq[k];
        self.chunks[c as usize].insert(p, s);
        self.place(c, p);
        for &d in &self.seq[k + 1..] {
            self.start[d as usize] += 1;
        }
        self.len += 1;
        if self.chunks[c as usize].len() >= 2 * CHUNK {
            let mut tail = Vec::with_capacity(2 * CHUNK);
            tail.extend(self.chunks[c as usize].drain(CHUNK..));
            let d = self.new_chunk(tail);
            self.start[d as usize] = self.start[c as usize] + CHUNK as u32;
            self.seq.insert(k + 1, d);
            self.place(d, 0);
        }
    }

    /// Adds `new`, sorted by `less` and none of them in the order, in one merge with the slots
    /// already in it, then cuts the chunks again: linear in the whole order, where inserting
    /// them one at a time seeks and shifts a chunk for each.
    fn merge(&mut self, new: &[Slot], less: impl Fn(Slot, Slot) -> bool) {
        if new.is_empty() {
            return;
        }
        let old: Vec<Slot> = self.iter_from((0, 0)).collect();
        let mut all = Vec::with_capacity(old.len() + new.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() && j < new.len() {
            if less(new[j], old[i]) {
                all.push(new[j]);
                j += 1;
            } else {
                all.push(old[i]);
                i += 1;
            }
        }
        all.extend_from_slice(&old[i..]);
        all.extend_from_slice(&new[j..]);
        let bound = all.iter().max().map_or(0, |&s| s as usize + 1);
        if self.at.len() < bound {
            self.at.resize(bound, (0, 0));
        }
        self.seq.clear();
        self.chunks.clear();
        self.start.clear();
        self.spare.clear();
        for piece in all.chunks(CHUNK) {
            let mut chunk = Vec::with_capacity(2 * CHUNK);
            chunk.extend_from_slice(piece);
            let start = u32::try_from(self.chunks.len() * CHUNK).expect("fewer than 2^32 slots");
            let c = self.new_chunk(chunk);
            self.start[c as usize] = start;
            self.seq.push(c);
            self.place(c, 0);
        }
        self.len = u32::try_from(all.len()).expect("fewer than 2^32 slots");
    }

    /// Removes `s`, which is in the order.
    fn remove(&mut self, s: Slot) {
        let (c, i) = self.at[s as usize];
        let chunk = &mut self.chunks[c as usize];
        debug_assert_eq!(chunk.get(i as usize), Some(&s), "a slot's recorded place");
        chunk.remove(i as usize);
        let k = self
            .seq
            .iter()
            .position(|&x| x == c)
            .expect("a slot's chunk is in the order");
        self.place(c, i as usize);
        for &d in &self.seq[k + 1..] {
            self.start[d as usize] -= 1;
        }
        self.len -= 1;
        let n = self.chunks[c as usize].len();
        if n == 0 {
            self.seq.remove(k);
            self.spare.push(c);
            return;
        }
        // Merge the next chunk into a small one.
        let next = self.seq.get(k + 1).copied();
        if let Some(d) =
            next.filter(|&d| n < CHUNK / 4 && n + self.chunks[d as usize].len() <= CHUNK)
        {
            let next = std::mem::take(&mut self.chunks[d as usize]);
            self.chunks[c as usize].extend(next);
            self.place(c, n);
            self.seq.remove(k + 1);
            self.spare.push(d);
        }
    }
}

/// The slots on both sorted lists.
fn intersect(a: &[Slot], b: &[Slot]) -> Vec<Slot> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    if small.len().saturating_mul(16) < large.len() {
        let mut rest = large;
        for &x in small {
            let i = rest.partition_point(|&y| y < x);
            rest = &rest[i..];
            match rest.first() {
                Some(&y) if y == x => out.push(x),
                Some(_) => {}
                None => break,
            }
        }
    } else {
        let (mut i, mut j) = (0, 0);
        while i < small.len() && j < large.len() {
            let (x, y) = (small[i], large[j]);
            i += usize::from(x <= y);
            j += usize::from(y <= x);
            if x == y {
                out.push(x);
            }
        }
    }
    out
}

/// The slots in both.
fn and(a: View<'_>, b: View<'_>) -> Cand<'static> {
    match (a, b) {
        (View::List(x), View::List(y)) => Cand::List(Cow::Owned(intersect(x, y))),
        (View::List(l), View::Bits(b)) | (View::Bits(b), View::List(l)) => Cand::List(Cow::Owned(
            l.iter().copied().filter(|&s| has(b, s)).collect(),
        )),
        (View::Bits(x), View::Bits(y)) => {
            let mut bits: Vec<u64> = x.iter().zip(y).map(|(a, b)| a & b).collect();
            while bits.last() == Some(&0) {
                bits.pop();
            }
            Cand::Bits(Cow::Owned(bits))
        }
    }
}

/// The slots in any of `sets` (`total` in all, counting repeats), all below `n`.
fn union(sets: &[&Set], total: usize, n: usize) -> Cand<'static> {
    if total.saturating_mul(8) < n && sets.iter().all(|s| matches!(s, Set::List(_))) {
        let mut out = Vec::with_capacity(total);
        for set in sets {
            if let Set::List(l) = set {
                out.extend_from_slice(l);
            }
        }
        out.sort_unstable();
        out.dedup();
        return Cand::List(Cow::Owned(out));
    }
    let mut bits = vec![0u64; n.div_ceil(64)];
    for set in sets {
        match set {
            Set::List(l) => {
                for &s in l {
                    bits[s as usize / 64] |= 1 << (s % 64);
                }
            }
            Set::Bits { bits: b, .. } => {
                for (w, x) in bits.iter_mut().zip(b) {
                    *w |= x;
                }
            }
        }
    }
    Cand::Bits(Cow::Owned(bits))
}

/// The candidates of `a` in any of `sets` (`total` in all), all below `n`.
fn and_any(a: &Cand<'_>, sets: &[&Set], total: usize, n: usize) -> Cand<'static> {
    match a {
        Cand::List(l) if l.len().saturating_mul(sets.len()).saturating_mul(8) < total + n / 64 => {
            Cand::List(Cow::Owned(
                l.iter()
                    .copied()
                    .filter(|&s| sets.iter().any(|set| set.contains(s)))
                    .collect(),
            ))
        }
        _ => and(a.view(), union(sets, total, n).view()),
    }
}

/// How a query takes its candidates in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Sort the candidates past the cursor by rank.
    Rank,
    /// Walk the order from the cursor, testing each slot against the candidates' bitmap, for
    /// up to `budget` slots; then, if `switch`, rank the candidates beyond.
    Walk { budget: usize, switch: bool },
}

/// The path for `c` candidates among `n` records, to fill a page of `limit`. A walk finds the
/// candidates at about one slot per nanosecond when they are spread through the order, ranking
/// costs some ten per candidate: walk for a few times the slots that spread candidates would need,
/// then rank the rest if they are clustered further on (ids begin with the park, and a park's
/// startups share its country).
fn path(c: usize, n: usize, limit: usize) -> Path {
    #[cfg(test)]
    if let Some(forced) = tests::forced() {
        return forced;
    }
    if c <= 256 {
        return Path::Rank;
    }
    Path::Walk {
        budget: 4 * (limit + 1) * (n / c + 1) + 256,
        switch: true,
    }
}

/// Takes the `candidates` ranked `lo` or later, in rank order, until `take` says the page is
/// full: sorts a batch of the lowest ranks at a time.
fn take_ranked(
    order: &Order,
    candidates: impl Iterator<Item = Slot>,
    lo: u32,
    limit: usize,
    mut take: impl FnMut(Slot) -> bool,
) {
    let mut keyed: Vec<u64> = candidates
        .filter_map(|s| {
            let r = order.rank(s);
            (r >= lo).then_some((u64::from(r) << 32) | u64::from(s))
        })
        .collect();
    let mut rest = keyed.as_mut_slice();
    let mut batch = limit + 1;
    while !rest.is_empty() {
        let len = rest.len();
        if len > batch {
            rest.select_nth_unstable(batch - 1);
        }
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(batch.min(len));
        head.sort_unstable();
        for &k in head.iter() {
            if take(k as Slot) {
                return;
            }
        }
        rest = tail;
        batch = batch.saturating_mul(2);
    }
}

/// One query of a table, beyond its predicate.
#[derive(Debug)]
struct Ask<'a> {
    sort: Sort,
    /// The cursor's sort key: lower-cased name (empty for `Sort::Id`) and id.
    cursor: Option<(String, RecordId)>,
    limit: usize,
    /// The sets of the filters that have them, each exactly the records that pass it (none:
    /// no record has the value).
    lists: Vec<Option<&'a Set>>,
    /// The lower-cased text search, not empty.
    q: Option<String>,
}

/// A source of candidates: one set, or the union of several.
#[derive(Debug)]
enum Source<'a> {
    One(&'a Set),
    Any(Vec<&'a Set>, usize),
}

#[derive(Debug)]
struct Entry<T> {
    record: T,
    /// Lower-cased name or title: the `Name` sort key (empty where there is no name order).
    name: Box<str>,
}

impl<T: Record> Entry<T> {
    fn new(record: T) -> Self {
        let name = if T::SEARCHED {
            record.text().0.to_lowercase().into_boxed_str()
        } else {
            Box::default()
        };
        Self { record, name }
    }
}

/// Slots per page of a [`Slab`].
const PAGE: usize = 64;

/// Records by slot, in pages of [`PAGE`]: the table grows a page at a time rather than by
/// reallocating (and copying) one buffer of every record.
#[derive(Debug)]
struct Slab<T> {
    pages: Vec<Box<[Option<Entry<T>>]>>,
    /// Slots handed out so far: every slot is below it.
    bound: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            pages: Vec::new(),
            bound: 0,
        }
    }
}

impl<T> Slab<T> {
    fn get(&self, s: Slot) -> Option<&Entry<T>> {
        let s = s as usize;
        self.pages.get(s / PAGE)?[s % PAGE].as_ref()
    }

    fn at(&mut self, s: Slot) -> &mut Option<Entry<T>> {
        let s = s as usize;
        &mut self.pages[s / PAGE][s % PAGE]
    }

    /// A slot never handed out before.
    fn grow(&mut self) -> Slot {
        if self.bound == self.pages.len() * PAGE {
            self.pages.push((0..PAGE).map(|_| None).collect());
        }
        self.bound += 1;
        u32::try_from(self.bound - 1).expect("fewer than 2^32 records")
    }
}

fn live<T>(slab: &Slab<T>, s: Slot) -> &Entry<T> {
    slab.get(s).expect("an indexed slot holds a record")
}

#[derive(Debug)]
struct Table<T> {
    slab: Slab<T>,
    /// Empty slots of `slab`.
    free: Vec<Slot>,
    by_id: Order,
    /// By (lower-cased name, id); empty unless `T::SEARCHED`.
    by_name: Order,
    lists: Lists,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            slab: Slab::default(),
            free: Vec::new(),
            by_id: Order::default(),
            by_name: Order::default(),
            lists: Lists::default(),
            len: 0,
        }
    }
}

impl<T: Record> Table<T> {
    fn entry(&self, s: Slot) -> &Entry<T> {
        live(&self.slab, s)
    }

    /// Every record, in slot order.
    fn records(&self) -> impl Iterator<Item = &T> {
        self.slab
            .pages
            .iter()
            .flat_map(|page| page.iter())
            .filter_map(|e| e.as_ref().map(|e| &e.record))
    }

    fn find(&self, id: &RecordId) -> Option<Slot> {
        let s = self
            .by_id
            .get(self.by_id.seek(|s| self.entry(s).record.id() < id))?;
        (self.entry(s).record.id() == id).then_some(s)
    }

    fn get(&self, id: &RecordId) -> Option<&T> {
        self.find(id).map(|s| &self.entry(s).record)
    }

    fn link(&mut self, s: Slot, id: bool, name: bool) {
        let slab = &self.slab;
        let e = live(slab, s);
        if id {
            let key = e.record.id();
            self.by_id.insert(s, |x| live(slab, x).record.id() < key);
        }
        if name && T::SEARCHED {
            let key = (&*e.name, e.record.id());
            self.by_name.insert(s, |x| {
                let o = live(slab, x);
                (&*o.name, o.record.id()) < key
            });
        }
    }

    /// Adds many records at once (a ledger's copy of its records, at start): the new ones are
    /// linked into the orders in one merge (see [`Order::merge`]). Answers the slots of the new
    /// records, and the records that must be set one by one as [`Self::set`] does: those whose
    /// id the table holds already, and the later of two with one id.
    fn extend(&mut self, records: Vec<T>) -> (Vec<Slot>, Vec<T>) {
        let mut added = Vec::with_capacity(records.len());
        let mut again = Vec::new();
        for r in records {
            if self.find(r.id()).is_some() {
                again.push(r);
                continue;
            }
            added.push(self.put_new(r));
        }
        let slab = &self.slab;
        // Stable: of two records with one id, the earlier stays and the later is set after it.
        added.sort_by(|&a, &b| live(slab, a).record.id().cmp(live(slab, b).record.id()));
        let mut twice = Vec::new();
        added.dedup_by(|later, earlier| {
            let same = live(slab, *later).record.id() == live(slab, *earlier).record.id();
            if same {
                twice.push(*later);
            }
            same
        });
        for s in twice {
            again.push(self.take_out(s));
        }
        if added.len().saturating_mul(MERGE_AT_LEAST) < self.by_id.len as usize {
            // A few records into a large order (a small park's ledger, many parks): a merge
            // would move the whole order for each.
            for &s in &added {
                self.link(s, true, true);
            }
            return (added, again);
        }
        let slab = &self.slab;
        self.by_id.merge(&added, |a, b| {
            live(slab, a).record.id() < live(slab, b).record.id()
        });
        if T::SEARCHED {
            let key = |s: Slot| {
                let e = live(slab, s);
                (&*e.name, e.record.id())
            };
            let mut by_name = added.clone();
            by_name.sort_unstable_by(|&a, &b| key(a).cmp(&key(b)));
            self.by_name.merge(&by_name, |a, b| key(a) < key(b));
        }
        (added, again)
    }

    /// Puts a new record in a free slot and its posting lists (not yet in the orders).
    fn put_new(&mut self, r: T) -> Slot {
        let s = match self.free.pop() {
            Some(s) => s,
            None => self.slab.grow(),
        };
        *self.slab.at(s) = Some(Entry::new(r));
        self.len += 1;
        self.lists
            .change(s, None, Some(&live(&self.slab, s).record));
        s
    }

    /// Takes the record of slot `s` out of the slab and its posting lists (not the orders).
    fn take_out(&mut self, s: Slot) -> T {
        let old = self
            .slab
            .at(s)
            .take()
            .expect("an indexed slot holds a record");
        self.free.push(s);
        self.len -= 1;
        self.lists.change(s, Some(&old.record), None);
        old.record
    }

    fn unlink(&mut self, s: Slot, id: bool, name: bool) {
        if id {
            self.by_id.remove(s);
        }
        if name && T::SEARCHED {
            self.by_name.remove(s);
        }
    }

    /// Sets or removes the record `id`: the record it replaced (with its slot) and the slot of the
    /// new one (the same slot when it replaces one).
    fn set(&mut self, id: &RecordId, r: Option<T>) -> (Option<(Slot, T)>, Option<Slot>) {
        debug_assert!(
            r.as_ref().is_none_or(|r| r.id() == id),
            "a record's id is its key"
        );
        match (self.find(id), r) {
            (None, None) => (None, None),
            (None, Some(r)) => {
                let s = self.put_new(r);
                self.link(s, true, true);
                (None, Some(s))
            }
            (Some(s), None) => {
                self.unlink(s, true, true);
                (Some((s, self.take_out(s))), None)
            }
            (Some(s), Some(r)) => {
                let e = Entry::new(r);
                let old = self.entry(s);
                let id_moves = old.record.id() != e.record.id();
                let name_moves = id_moves || old.name != e.name;
                self.unlink(s, id_moves, name_moves);
                let old = self
                    .slab
                    .at(s)
                    .replace(e)
                    .expect("an indexed slot holds a record");
                self.link(s, id_moves, name_moves);
                self.lists
                    .change(s, Some(&old.record), Some(&live(&self.slab, s).record));
                (Some((s, old.record)), Some(s))
            }
        }
    }

    /// The slots of the page `ask` asks for, among the records `keep` accepts, and whether more
    /// follow.
    fn select(&self, ask: &Ask<'_>, keep: impl Fn(&T) -> bool) -> (Vec<Slot>, bool) {
        let nothing = (Vec::new(), false);
        let n = self.slab.bound;
        // Candidate sources, each with an upper bound of its size.
        let mut sources: Vec<(usize, Source<'_>)> = Vec::new();
        for l in &ask.lists {
            match l {
                Some(set) if !set.is_empty() => sources.push((set.len(), Source::One(set))),
                _ => return nothing,
            }
        }
        // Whether the word index answers `q` exactly: a single run with nothing around it is in
        // the text if and only if it is in one of its words.
        let mut q_exact = false;
        if let Some(q) = &ask.q {
            let runs = runs(q);
            q_exact = matches!(runs.as_slice(), [r] if !r.starts_word && !r.ends_word);
            for r in &runs {
                match self.lists.words.hits(r, 2 * n + 64) {
                    Hits::Many => q_exact = false,
                    Hits::Sets(sets, total) => {
                        let source = match sets.as_slice() {
                            [] => return nothing,
                            [one] => Source::One(one),
                            _ => Source::Any(sets, total),
                        };
                        sources.push((total, source));
                    }
                }
            }
        }
        sources.sort_by_key(|s| s.0);
        let mut cand: Option<Cand<'_>> = None;
        for (_, source) in sources {
            let next = match (cand.take(), source) {
                (None, Source::One(set)) => Cand::of(set.view()),
                (None, Source::Any(sets, total)) => union(&sets, total, n),
                (Some(c), Source::One(set)) => and(c.view(), set.view()),
                (Some(c), Source::Any(sets, total)) => and_any(&c, &sets, total, n),
            };
            if next.is_empty() {
                return nothing;
            }
            cand = Some(next);
        }
        let confirm = ask.q.as_deref().filter(|_| !q_exact);

        let order = match ask.sort {
            Sort::Id => &self.by_id,
            Sort::Name => &self.by_name,
        };
        let from = match (&ask.cursor, ask.sort) {
            (None, _) => (0, 0),
            (Some((_, id)), Sort::Id) => order.seek(|s| self.entry(s).record.id() <= id),
            (Some((name, id)), Sort::Name) => order.seek(|s| {
                let e = self.entry(s);
                (&*e.name, e.record.id()) <= (name.as_str(), id)
            }),
        };
        let mut buf = String::new();
        let mut out = Vec::with_capacity(ask.limit.min(64));
        let mut more = false;
        // Takes `s` if it matches; true once the page is full and one more matched.
        let mut take = |s: Slot| {
            let r = &self.entry(s).record;
            let matches = keep(r)
                && confirm.is_none_or(|q| {
                    search_text(r, &mut buf);
                    buf.contains(q)
                });
            if matches {
                if out.len() == ask.limit {
                    more = true;
                    return true;
                }
                out.push(s);
            }
            false
        };
        let Some(c) = cand else {
            for s in order.iter_from(from) {
                if take(s) {
                    break;
                }
            }
            return (out, more);
        };
        let lo = order.rank_at(from);
        let total = c.len();
        match path(total, self.len, ask.limit) {
            Path::Rank => take_ranked(order, c.slots(), lo, ask.limit, take),
            Path::Walk { budget, switch } => {
                let bits = match &c {
                    Cand::Bits(b) => Cow::Borrowed(&**b),
                    Cand::List(l) => Cow::Owned(bitmap(l, n)),
                };
                let mut walk = order.iter_from(from);
                let mut walked = 0;
                for s in walk.by_ref().take(budget) {
                    walked += 1;
                    if has(&bits, s) && take(s) {
                        return (out, more);
                    }
                }
                let left = (order.len - lo) as usize - walked;
                if switch && total * 8 < left {
                    take_ranked(order, c.slots(), lo + walked as u32, ask.limit, take);
                } else {
                    for s in walk {
                        if has(&bits, s) && take(s) {
                            break;
                        }
                    }
                }
            }
        }
        (out, more)
    }

    fn page(
        &self,
        f: &Filter,
        lists: Vec<Option<&Set>>,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Page<T>, QueryError> {
        let limit = limit_of(f.limit)?;
        let cursor = f.cursor.as_deref().map(decode_cursor).transpose()?;
        let ask = Ask {
            sort: f.sort,
            cursor,
            limit,
            lists,
            q: f.q
                .as_deref()
                .map(str::to_lowercase)
                .filter(|q| !q.is_empty()),
        };
        let (slots, more) = self.select(&ask, keep);
        let next_cursor = slots.last().filter(|_| more).map(|&s| {
            let e = self.entry(s);
            match f.sort {
                Sort::Id => encode_cursor("", e.record.id()),
                Sort::Name => encode_cursor(&e.name, e.record.id()),
            }
        });
        Ok(Page {
            items: slots
                .iter()
                .map(|&s| self.entry(s).record.clone())
                .collect(),
            next_cursor,
        })
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

type Decisions = HashMap<RecordId, BTreeMap<ParkId, Decision>>;

/// The records one park's ledger holds, as the index keeps them (applications not yet joined
/// with decisions; decisions by the application they decide). Each snapshot of the ledger is
/// written with a copy of them (a file beside the store's, tagged with the snapshot's changes),
/// so that a start indexes them without reading each record back out of Automerge.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerRecords {
    pub startups: Vec<Startup>,
    pub programs: Vec<Program>,
    pub applications: Vec<Application>,
    pub decisions: Vec<(RecordId, Decision)>,
}

/// [`LedgerRecords`] borrowed from the index, to encode without copying the records.
#[derive(Serialize)]
struct LedgerRecordsRef<'a> {
    startups: Vec<&'a Startup>,
    programs: Vec<&'a Program>,
    applications: Vec<&'a Application>,
    decisions: Vec<(&'a RecordId, &'a Decision)>,
}

impl LedgerRecords {
    /// The records encoded as [`Index::encode_ledger`] encodes them.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialise")
    }

    /// Decodes what [`Index::encode_ledger`] wrote for `park`, refusing a record of another
    /// park: the ledger can hold no such record, so the bytes are not what was written.
    pub fn decode(park: &ParkId, bytes: &[u8]) -> Result<Self, String> {
        let records: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let foreign = records
            .startups
            .iter()
            .map(|r| &r.id)
            .chain(records.programs.iter().map(|r| &r.id))
            .chain(records.applications.iter().map(|r| &r.id))
            .find(|id| id.park() != park);
        match foreign {
            Some(id) => Err(format!("record {id} is not of park {park}")),
            None => Ok(records),
        }
    }

    pub fn len(&self) -> usize {
        self.startups.len() + self.programs.len() + self.applications.len() + self.decisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An application's status joined with its host park's decision, as [`Application::join`]
/// derives it.
fn joined_status<'a>(decisions: &'a Decisions, a: &'a Application) -> &'a str {
    if a.withdrawn {
        "withdrawn"
    } else {
        decisions
            .get(&a.id)
            .and_then(|by| by.get(a.program.park()))
            .map_or("pending", |d| d.status.as_str())
    }
}

/// The index itself.
#[derive(Debug, Default)]
pub struct Index {
    startups: Table<Startup>,
    programs: Table<Program>,
    /// Applications as their park stored them, not yet joined.
    applications: Table<Application>,
    /// Applications by their joined status.
    app_status: Postings<String>,
    /// Decisions by application id, by the park that wrote them. Only the program's host
    /// park's decision counts; the others are kept so a late program fix needs no re-read.
    decisions: Decisions,
    parks: BTreeMap<ParkId, Park>,
}

impl Index {
    pub fn set_startup(&mut self, id: RecordId, s: Option<Startup>) {
        self.startups.set(&id, s);
    }

    pub fn set_program(&mut self, id: RecordId, p: Option<Program>) {
        self.programs.set(&id, p);
    }

    pub fn set_application(&mut self, id: RecordId, a: Option<Application>) {
        let (old, new) = self.applications.set(&id, a);
        if let Some((s, a)) = &old {
            self.app_status
                .remove(joined_status(&self.decisions, a), *s);
        }
        if let Some(s) = new {
            let a = &live(&self.applications.slab, s).record;
            self.app_status.add(joined_status(&self.decisions, a), s);
        }
    }

    pub fn set_decision(&mut self, app: RecordId, by: ParkId, d: Option<Decision>) {
        // Only the host park's decision changes the joined status.
        let host = self
            .applications
            .find(&app)
            .filter(|&s| live(&self.applications.slab, s).record.program.park() == &by);
        let before = host.map(|s| {
            joined_status(&self.decisions, &live(&self.applications.slab, s).record).to_owned()
        });
        let entry = self.decisions.entry(app.clone()).or_default();
        match d {
            Some(d) => entry.insert(by, d),
            None => entry.remove(&by),
        };
        if entry.is_empty() {
            self.decisions.remove(&app);
        }
        if let (Some(s), Some(before)) = (host, before) {
            let after = joined_status(&self.decisions, &live(&self.applications.slab, s).record);
            if after != before {
                self.app_status.remove(before.as_str(), s);
                self.app_status.add(after, s);
            }
        }
    }

    /// Encodes the records of `park`'s ledger (see [`LedgerRecords`]).
    pub fn encode_ledger(&self, park: &ParkId) -> Vec<u8> {
        serde_json::to_vec(&self.ledger_refs(park)).expect("records serialise")
    }

    /// The records of `park`'s ledger, copied out of the index: [`LedgerRecords::encode`]
    /// gives of them what [`Self::encode_ledger`] gives, on another thread than the index's.
    pub fn ledger_records(&self, park: &ParkId) -> LedgerRecords {
        let r = self.ledger_refs(park);
        LedgerRecords {
            startups: r.startups.into_iter().cloned().collect(),
            programs: r.programs.into_iter().cloned().collect(),
            applications: r.applications.into_iter().cloned().collect(),
            decisions: r
                .decisions
                .into_iter()
                .map(|(app, d)| (app.clone(), d.clone()))
                .collect(),
        }
    }

    fn ledger_refs(&self, park: &ParkId) -> LedgerRecordsRef<'_> {
        LedgerRecordsRef {
            startups: self
                .startups
                .records()
                .filter(|r| r.id.park() == park)
                .collect(),
            programs: self
                .programs
                .records()
                .filter(|r| r.id.park() == park)
                .collect(),
            applications: self
                .applications
                .records()
                .filter(|r| r.id.park() == park)
                .collect(),
            decisions: self
                .decisions
                .iter()
                .filter_map(|(app, by)| by.get(park).map(|d| (app, d)))
                .collect(),
        }
    }

    /// Indexes the records of `park`'s ledger, as [`Self::encode_ledger`] gave them.
    pub fn load_ledger(&mut self, park: &ParkId, records: LedgerRecords) {
        let (_, again) = self.startups.extend(records.startups);
        for r in again {
            self.set_startup(r.id.clone(), Some(r));
        }
        let (_, again) = self.programs.extend(records.programs);
        for r in again {
            self.set_program(r.id.clone(), Some(r));
        }
        let (added, again) = self.applications.extend(records.applications);
        for s in added {
            let a = &live(&self.applications.slab, s).record;
            self.app_status.add(joined_status(&self.decisions, a), s);
        }
        for r in again {
            self.set_application(r.id.clone(), Some(r));
        }
        for (app, d) in records.decisions {
            self.set_decision(app, park.clone(), Some(d));
        }
    }

    pub fn set_park(&mut self, id: ParkId, p: Option<Park>) {
        match p {
            Some(p) => self.parks.insert(id, p),
            None => self.parks.remove(&id),
        };
    }

    pub fn startup(&self, id: &RecordId) -> Option<&Startup> {
        self.startups.get(id)
    }

    pub fn program(&self, id: &RecordId) -> Option<&Program> {
        self.programs.get(id)
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
        let t = &self.startups.lists;
        let mut lists = Vec::new();
        if let Some(p) = &f.park {
            lists.push(t.get(S_PARK, p.as_str()));
        }
        if let Some(c) = &f.country {
            lists.push(t.get(S_COUNTRY, &country_key(c)));
        }
        if let Some(x) = &f.sector {
            lists.push(t.get(S_SECTOR, x));
        }
        if let Some(x) = &f.stage {
            lists.push(t.get(S_STAGE, x));
        }
        self.startups.page(f, lists, |s| {
            f.park.as_ref().is_none_or(|p| &s.park == p)
                && f.country
                    .as_ref()
                    .is_none_or(|c| s.country.eq_ignore_ascii_case(c))
                && f.sector.as_ref().is_none_or(|x| s.sectors.contains(x))
                && f.stage.as_ref().is_none_or(|x| &s.stage == x)
        })
    }

    pub fn programs(&self, f: &Filter) -> Result<Page<Program>, QueryError> {
        let t = &self.programs.lists;
        let mut lists = Vec::new();
        if let Some(p) = &f.park {
            lists.push(t.get(P_PARK, p.as_str()));
        }
        if let Some(x) = &f.kind {
            lists.push(t.get(P_KIND, x));
        }
        // Country and stage eligibility ("none listed, or listed") are checked on the records.
        self.programs.page(f, lists, |p| {
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
        let cursor = f.cursor.as_deref().map(decode_cursor).transpose()?;
        let t = &self.applications.lists;
        let program = f.program.as_ref().map(ToString::to_string);
        let mut lists = Vec::new();
        if let Some(p) = &f.park {
            lists.push(t.get(A_PARK, p.as_str()));
        }
        if let Some(p) = &program {
            lists.push(t.get(A_PROGRAM, p));
        }
        if let Some(h) = &f.host {
            lists.push(t.get(A_HOST, h.as_str()));
        }
        if let Some(s) = &f.status {
            lists.push(self.app_status.get(s.as_str()));
        }
        let ask = Ask {
            sort: Sort::Id,
            cursor,
            limit,
            lists,
            q: None,
        };
        let (slots, more) = self.applications.select(&ask, |a| {
            f.park.as_ref().is_none_or(|p| &a.park == p)
                && f.program.as_ref().is_none_or(|p| &a.program == p)
                && f.host.as_ref().is_none_or(|h| a.program.park() == h)
                && f.status
                    .as_ref()
                    .is_none_or(|s| joined_status(&self.decisions, a) == s)
        });
        let items: Vec<Application> = slots
            .iter()
            .map(|&s| self.joined(&self.applications.entry(s).record))
            .collect();
        let next_cursor = items
            .last()
            .filter(|_| more)
            .map(|a| encode_cursor("", &a.id));
        Ok(Page { items, next_cursor })
    }

    /// Record counts by kind, for status and metrics.
    pub fn counts(&self) -> Counts {
        Counts {
            parks: self.parks.len(),
            startups: self.startups.len,
            programs: self.programs.len,
            applications: self.applications.len,
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

    // ---- planner override, generated registries and a reference implementation ----

    use std::cell::Cell;
    use std::collections::BTreeSet;

    use kervan_protocol::records::Eligibility;
    use std::fmt::Debug;

    thread_local! {
        /// The path every query with candidates takes, rather than the planner's choice.
        static FORCE: Cell<Option<Path>> = const { Cell::new(None) };
    }

    pub(super) fn forced() -> Option<Path> {
        FORCE.with(Cell::get)
    }

    fn force(f: Option<Path>) {
        FORCE.with(|c| c.set(f));
    }

    /// The planner's choice, then each path forced: ranking, walking all the way, and walking a
    /// few slots before ranking the rest.
    const MODES: [Option<Path>; 4] = [
        None,
        Some(Path::Rank),
        Some(Path::Walk {
            budget: usize::MAX,
            switch: false,
        }),
        Some(Path::Walk {
            budget: 3,
            switch: true,
        }),
    ];

    /// xorshift64*: a small seeded generator, enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }

        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }

        fn some(&mut self, xs: &[&str], max: usize) -> Vec<String> {
            (0..self.below(max + 1))
                .map(|_| self.pick(xs).to_owned())
                .collect()
        }

        fn words(&mut self, xs: &[&str], min: usize, max: usize) -> String {
            let n = min + self.below(max - min + 1);
            (0..n).map(|_| self.pick(xs)).collect::<Vec<_>>().join(" ")
        }
    }

    const PARKS: [&str; 4] = ["kz-astana-hub", "uz-it-park", "kg-htp", "az-hub"];
    const COUNTRIES: [&str; 8] = ["KZ", "kz", "Kz", "UZ", "KG", "AZ", "tr", "İT"];
    const SECTORS: [&str; 5] = ["ai", "fintech", "agritech", "edtech", "Ai"];
    const STAGES: [&str; 4] = ["idea", "seed", "growth", "Seed"];
    const KINDS: [&str; 3] = ["grant", "event", "residency"];
    const STATUSES: [&str; 3] = ["accepted", "rejected", "waitlisted"];
    const NAME_WORDS: [&str; 16] = [
        "Qazaq",
        "Silk",
        "İstanbul",
        "Şeker",
        "ΟΔΟΣ",
        "Straße",
        "Satellite",
        "Sensor",
        "Lite",
        "lite-sen",
        "ǅemal",
        "KELVIN",
        "Ab",
        "a.b",
        "Labs",
        "42",
    ];
    const TEXT_WORDS: [&str; 16] = [
        "builds",
        "satellite",
        "images",
        "for",
        "rural",
        "clinics,",
        "cold-chain",
        "tracking",
        "ıslak",
        "ŞEHİR",
        "σίσυφος",
        "  ",
        "Lite sen",
        "x",
        "ΑΣ.",
        "e\u{301}t\u{e9}",
    ];
    const TAGS: [&str; 6] = ["Satellite", "AI", "lite", "sensors", "ß", "İ"];
    /// Text searches beside substrings of the records' own texts.
    const QS: [&str; 30] = [
        "lite sen",
        "LITE SEN",
        "a",
        "İ",
        "i\u{307}",
        "ş",
        "-",
        " ",
        "",
        "sat",
        "SATELLITE",
        "σ",
        "ς",
        "ss",
        "\n",
        "labs\nqaz",
        "e s",
        ".",
        "k",
        "straße",
        "STRASSE",
        "ǆ",
        "ab",
        "a.b",
        "42",
        "se",
        "nsor",
        " lite",
        "lite ",
        "no such words",
    ];

    fn id(park: &str, local: String) -> RecordId {
        format!("{park}/{local}").parse().expect("id")
    }

    fn gen_startup(rng: &mut Rng, id: RecordId) -> Startup {
        Startup {
            park: id.park().clone(),
            id,
            name: rng.words(&NAME_WORDS, 1, 3),
            country: rng.pick(&COUNTRIES).into(),
            city: None,
            sectors: rng.some(&SECTORS, 3),
            stage: rng.pick(&STAGES).into(),
            founded: None,
            team_size: None,
            website: None,
            summary: (!rng.chance(5)).then(|| rng.words(&TEXT_WORDS, 0, 6)),
            looking_for: vec![],
            contact: None,
            tags: rng.some(&TAGS, 3),
            created_at: None,
            updated_at: None,
        }
    }

    fn gen_program(rng: &mut Rng, id: RecordId) -> Program {
        let eligibility = (!rng.chance(3)).then(|| Eligibility {
            countries: rng.some(&["KZ", "kz", "UZ"], 2),
            stages: rng.some(&STAGES, 2),
        });
        Program {
            park: id.park().clone(),
            id,
            kind: rng.pick(&KINDS).into(),
            title: rng.words(&NAME_WORDS, 1, 3),
            summary: (!rng.chance(4)).then(|| rng.words(&TEXT_WORDS, 0, 5)),
            seats: None,
            starts: None,
            ends: None,
            benefits: rng.some(&TAGS, 2),
            eligibility,
            open: true,
            created_at: None,
            updated_at: None,
        }
    }

    fn gen_application(rng: &mut Rng, id: RecordId, programs: &[RecordId]) -> Application {
        let program = match programs.len() {
            0 => "kg-htp/nothing".parse().expect("id"),
            n => programs[rng.below(n)].clone(),
        };
        Application {
            park: id.park().clone(),
            id,
            startup: "kz-astana-hub/s1".parse().expect("id"),
            program,
            message: None,
            withdrawn: rng.chance(6),
            submitted_at: None,
            status: "pending".into(),
            decision: None,
        }
    }

    /// The index and, beside it, the plain records it was given.
    #[derive(Default)]
    struct Both {
        index: Index,
        startups: BTreeMap<RecordId, Startup>,
        programs: BTreeMap<RecordId, Program>,
        apps: BTreeMap<RecordId, Application>,
        decisions: HashMap<RecordId, BTreeMap<ParkId, Decision>>,
    }

    impl Both {
        fn startup(&mut self, id: RecordId, s: Option<Startup>) {
            match &s {
                Some(s) => self.startups.insert(id.clone(), s.clone()),
                None => self.startups.remove(&id),
            };
            self.index.set_startup(id, s);
        }

        fn program(&mut self, id: RecordId, p: Option<Program>) {
            match &p {
                Some(p) => self.programs.insert(id.clone(), p.clone()),
                None => self.programs.remove(&id),
            };
            self.index.set_program(id, p);
        }

        fn app(&mut self, id: RecordId, a: Option<Application>) {
            match &a {
                Some(a) => self.apps.insert(id.clone(), a.clone()),
                None => self.apps.remove(&id),
            };
            self.index.set_application(id, a);
        }

        fn decision(&mut self, app: RecordId, by: ParkId, d: Option<Decision>) {
            let e = self.decisions.entry(app.clone()).or_default();
            match &d {
                Some(d) => e.insert(by.clone(), d.clone()),
                None => e.remove(&by),
            };
            if e.is_empty() {
                self.decisions.remove(&app);
            }
            self.index.set_decision(app, by, d);
        }

        fn joined(&self, a: &Application) -> Application {
            let d = self
                .decisions
                .get(&a.id)
                .and_then(|by| by.get(a.program.park()))
                .cloned();
            let mut a = a.clone();
            a.join(d);
            a
        }

        /// One random change: mostly inserts, some updates (moving country, sectors, name,
        /// text) and removals.
        fn change(&mut self, rng: &mut Rng) {
            let park = rng.pick(&PARKS);
            match rng.below(20) {
                0..=9 => {
                    let i = id(park, format!("s{:05}", rng.below(100_000)));
                    let s = gen_startup(rng, i.clone());
                    self.startup(i, Some(s));
                }
                10..=11 => {
                    if let Some(i) = nth_key(&self.startups, rng) {
                        let mut s = self.startups[&i].clone();
                        match rng.below(4) {
                            0 => s.country = rng.pick(&COUNTRIES).into(),
                            1 => s.sectors = rng.some(&SECTORS, 3),
                            2 => s.name = rng.words(&NAME_WORDS, 1, 3),
                            _ => s = gen_startup(rng, i.clone()),
                        }
                        self.startup(i, Some(s));
                    }
                }
                12 => {
                    if let Some(i) = nth_key(&self.startups, rng) {
                        self.startup(i, None);
                    }
                }
                13 => {
                    let i = id(park, format!("p{:04}", rng.below(1000)));
                    let p = gen_program(rng, i.clone());
                    self.program(i, Some(p));
                }
                14 => {
                    if let Some(i) = nth_key(&self.programs, rng) {
                        if rng.chance(2) {
                            self.program(i, None);
                        } else {
                            let p = gen_program(rng, i.clone());
                            self.program(i, Some(p));
                        }
                    }
                }
                15..=16 => {
                    let programs: Vec<RecordId> = self.programs.keys().cloned().collect();
                    let i = id(park, format!("a{:05}", rng.below(50_000)));
                    let a = gen_application(rng, i.clone(), &programs);
                    self.app(i, Some(a));
                }
                17 => {
                    if let Some(i) = nth_key(&self.apps, rng) {
                        if rng.chance(3) {
                            self.app(i, None);
                        } else {
                            let mut a = self.apps[&i].clone();
                            a.withdrawn = !a.withdrawn;
                            self.app(i, Some(a));
                        }
                    }
                }
                _ => {
                    let app = match nth_key(&self.apps, rng) {
                        Some(i) if !rng.chance(10) => i,
                        _ => id(park, format!("a{:05}", rng.below(50_000))),
                    };
                    let host = self
                        .apps
                        .get(&app)
                        .map(|a| a.program.park().clone())
                        .filter(|_| !rng.chance(4))
                        .unwrap_or_else(|| rng.pick(&PARKS).parse().expect("park"));
                    let d = (!rng.chance(5)).then(|| Decision {
                        status: rng.pick(&STATUSES).into(),
                        note: None,
                        decided_at: None,
                    });
                    self.decision(app, host, d);
                }
            }
        }
    }

    fn nth_key<V>(m: &BTreeMap<RecordId, V>, rng: &mut Rng) -> Option<RecordId> {
        if m.is_empty() {
            return None;
        }
        m.keys().nth(rng.below(m.len())).cloned()
    }

    fn lowered(name: &str, summary: Option<&str>, words: &[String]) -> String {
        format!("{name}\n{}\n{}", summary.unwrap_or(""), words.join("\n")).to_lowercase()
    }

    /// The reference: every match, in order, each with the cursor that points after it.
    fn reference<'a, T: Clone + 'a>(
        records: impl Iterator<Item = (&'a RecordId, &'a T)>,
        f: &Filter,
        name: impl Fn(&T) -> &str,
        text: impl Fn(&T) -> String,
        keep: impl Fn(&T) -> bool,
    ) -> Vec<(String, T)> {
        let q = f.q.as_deref().map(str::to_lowercase);
        let mut out: Vec<((String, RecordId), T)> = records
            .filter(|(_, r)| keep(r) && q.as_ref().is_none_or(|q| text(r).contains(q.as_str())))
            .map(|(id, r)| {
                let key = match f.sort {
                    Sort::Id => String::new(),
                    Sort::Name => name(r).to_lowercase(),
                };
                ((key, id.clone()), r.clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter()
            .map(|((k, id), r)| (encode_cursor(&k, &id), r))
            .collect()
    }

    /// Walks every page of a query and compares it with the reference.
    fn walk<T: PartialEq + Debug>(
        expected: &[(String, T)],
        limit: usize,
        mut page: impl FnMut(Option<String>) -> Page<T>,
        what: &str,
    ) {
        let mut cursor = None;
        let mut at = 0;
        for _ in 0..expected.len() / limit + 2 {
            let p = page(cursor.clone());
            let end = (at + limit).min(expected.len());
            let want: Vec<&T> = expected[at..end].iter().map(|(_, r)| r).collect();
            let got: Vec<&T> = p.items.iter().collect();
            assert_eq!(got, want, "{what}: page from {at}");
            let want_cursor = (end < expected.len()).then(|| expected[end - 1].0.clone());
            assert_eq!(p.next_cursor, want_cursor, "{what}: cursor after {end}");
            at = end;
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => return,
            }
        }
        panic!("{what}: paging did not end");
    }

    /// A limit that walks the expected matches in at most about 40 pages.
    fn limit_for(rng: &mut Rng, n: usize) -> usize {
        let l = [1, 2, 3, 7, 50, 500][rng.below(6)];
        l.max(n / 40 + 1).min(MAX_LIMIT)
    }

    /// Text searches: the fixed ones and substrings (at char boundaries, any case) of the
    /// records' texts, some spanning word boundaries.
    fn searches(rng: &mut Rng, both: &Both) -> Vec<String> {
        let mut out: Vec<String> = QS.iter().map(|s| (*s).to_owned()).collect();
        let texts: Vec<String> = both
            .startups
            .values()
            .take(200)
            .map(|s| {
                format!(
                    "{}\n{}\n{}",
                    s.name,
                    s.summary.as_deref().unwrap_or(""),
                    s.tags.join("\n")
                )
            })
            .chain(
                both.programs
                    .values()
                    .take(50)
                    .map(|p| format!("{} {}", p.title, p.summary.as_deref().unwrap_or(""))),
            )
            .collect();
        for _ in 0..120 {
            if texts.is_empty() {
                break;
            }
            let t = &texts[rng.below(texts.len())];
            let chars: Vec<(usize, char)> = t.char_indices().collect();
            if chars.is_empty() {
                continue;
            }
            let a = rng.below(chars.len());
            let b = (a + 1 + rng.below(12)).min(chars.len());
            let end = chars.get(b).map_or(t.len(), |c| c.0);
            let s = &t[chars[a].0..end];
            out.push(if rng.chance(2) {
                s.to_uppercase()
            } else {
                s.to_owned()
            });
        }
        out
    }

    fn parks_or_none(rng: &mut Rng) -> Option<ParkId> {
        rng.chance(3).then(|| {
            if rng.chance(8) {
                "tr-nowhere".parse().expect("park")
            } else {
                rng.pick(&PARKS).parse().expect("park")
            }
        })
    }

    fn check_startups(both: &Both, rng: &mut Rng, qs: &[String], rounds: usize) {
        for i in 0..rounds {
            let f = Filter {
                park: parks_or_none(rng),
                country: rng.chance(3).then(|| {
                    rng.pick(&["kz", "KZ", "uz", "Tr", "AZ", "İt", "i̇t", "xx"])
                        .into()
                }),
                sector: rng.chance(3).then(|| rng.pick(&SECTORS).into()),
                stage: rng.chance(4).then(|| rng.pick(&STAGES).into()),
                kind: None,
                q: rng.chance(2).then(|| qs[rng.below(qs.len())].clone()),
                sort: if rng.chance(2) { Sort::Id } else { Sort::Name },
                limit: None,
                cursor: None,
            };
            let expected = reference(
                both.startups.iter(),
                &f,
                |s| &s.name,
                |s| lowered(&s.name, s.summary.as_deref(), &s.tags),
                |s| {
                    f.park.as_ref().is_none_or(|p| &s.park == p)
                        && f.country
                            .as_ref()
                            .is_none_or(|c| s.country.eq_ignore_ascii_case(c))
                        && f.sector.as_ref().is_none_or(|x| s.sectors.contains(x))
                        && f.stage.as_ref().is_none_or(|x| &s.stage == x)
                },
            );
            let limit = limit_for(rng, expected.len());
            let mode = MODES[i % MODES.len()];
            force(mode);
            walk(
                &expected,
                limit,
                |cursor| {
                    let g = Filter {
                        limit: Some(limit),
                        cursor,
                        ..f.clone()
                    };
                    both.index.startups(&g).expect("page")
                },
                &format!("startups {f:?} limit {limit} mode {mode:?}"),
            );
            force(None);
        }
    }

    fn check_programs(both: &Both, rng: &mut Rng, qs: &[String], rounds: usize) {
        for i in 0..rounds {
            let f = Filter {
                park: parks_or_none(rng),
                country: rng
                    .chance(3)
                    .then(|| rng.pick(&["KZ", "kz", "UZ", "TR"]).into()),
                sector: None,
                stage: rng.chance(3).then(|| rng.pick(&STAGES).into()),
                kind: rng
                    .chance(3)
                    .then(|| rng.pick(&["grant", "event", "residency", "x"]).into()),
                q: rng.chance(2).then(|| qs[rng.below(qs.len())].clone()),
                sort: if rng.chance(2) { Sort::Id } else { Sort::Name },
                limit: None,
                cursor: None,
            };
            let expected = reference(
                both.programs.iter(),
                &f,
                |p| &p.title,
                |p| lowered(&p.title, p.summary.as_deref(), &p.benefits),
                |p| {
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
                },
            );
            let limit = limit_for(rng, expected.len());
            let mode = MODES[i % MODES.len()];
            force(mode);
            walk(
                &expected,
                limit,
                |cursor| {
                    let g = Filter {
                        limit: Some(limit),
                        cursor,
                        ..f.clone()
                    };
                    both.index.programs(&g).expect("page")
                },
                &format!("programs {f:?} limit {limit} mode {mode:?}"),
            );
            force(None);
        }
    }

    fn check_applications(both: &Both, rng: &mut Rng, rounds: usize) {
        let programs: Vec<RecordId> = both.programs.keys().cloned().collect();
        for i in 0..rounds {
            let f = AppFilter {
                park: parks_or_none(rng),
                program: (rng.chance(4) && !programs.is_empty())
                    .then(|| programs[rng.below(programs.len())].clone()),
                host: parks_or_none(rng),
                status: rng.chance(2).then(|| {
                    rng.pick(&[
                        "pending",
                        "withdrawn",
                        "accepted",
                        "rejected",
                        "waitlisted",
                        "x",
                    ])
                    .into()
                }),
                limit: None,
                cursor: None,
            };
            let expected: Vec<(String, Application)> = both
                .apps
                .values()
                .map(|a| both.joined(a))
                .filter(|a| {
                    f.park.as_ref().is_none_or(|p| &a.park == p)
                        && f.program.as_ref().is_none_or(|p| &a.program == p)
                        && f.host.as_ref().is_none_or(|h| a.program.park() == h)
                        && f.status.as_ref().is_none_or(|s| &a.status == s)
                })
                .map(|a| (encode_cursor("", &a.id), a))
                .collect();
            let limit = limit_for(rng, expected.len());
            let mode = MODES[i % MODES.len()];
            force(mode);
            walk(
                &expected,
                limit,
                |cursor| {
                    let g = AppFilter {
                        limit: Some(limit),
                        cursor,
                        ..f.clone()
                    };
                    both.index.applications(&g).expect("page")
                },
                &format!("applications {f:?} limit {limit} mode {mode:?}"),
            );
            force(None);
        }
        for (id, a) in &both.apps {
            assert_eq!(both.index.application(id), Some(both.joined(a)));
        }
    }

    /// The slots of a set, checking its form: a list sorted, a bitmap with its count and no
    /// trailing empty word, not sparser than a list would be.
    fn members(set: &Set) -> BTreeSet<Slot> {
        match set {
            Set::List(l) => {
                assert!(l.windows(2).all(|w| w[0] < w[1]), "sorted");
                l.iter().copied().collect()
            }
            Set::Bits { bits, len } => {
                let v: BTreeSet<Slot> = ones(bits).collect();
                assert_eq!(v.len(), *len, "count");
                assert!(bits.last() != Some(&0) && *len >= bits.len(), "dense");
                v
            }
        }
    }

    #[test]
    fn sets_switch_between_list_and_bitmap_and_keep_their_members() {
        let mut rng = Rng(11);
        let mut set = Set::default();
        let mut model = BTreeSet::new();
        let mut forms = (0, 0);
        for i in 0..20_000 {
            // Phases: dense low slots, then sparse high ones, then removals.
            let s = match i / 5000 {
                0 => rng.below(2000),
                1 => rng.below(200_000),
                _ => rng.below(4000),
            } as Slot;
            if i / 5000 >= 2 || rng.chance(4) {
                assert_eq!(set.remove(s), model.remove(&s));
            } else {
                set.insert(s);
                model.insert(s);
            }
            assert_eq!(set.len(), model.len());
            assert_eq!(set.contains(s), model.contains(&s));
            match set {
                Set::List(_) => forms.0 += 1,
                Set::Bits { .. } => forms.1 += 1,
            }
            if i % 97 == 0 {
                assert_eq!(members(&set), model);
            }
        }
        assert_eq!(members(&set), model);
        assert!(forms.0 > 0 && forms.1 > 0, "{forms:?}");
    }

    /// The index's inner structures agree with its records: every posting list, word list and
    /// order holds exactly the live records that belong on it.
    fn check_structure(index: &Index) {
        fn orders<T: Record>(t: &Table<T>) {
            let live: Vec<Slot> = (0..t.slab.bound as Slot)
                .filter(|&s| t.slab.get(s).is_some())
                .collect();
            assert_eq!(live.len(), t.len);
            let mut by_id = live.clone();
            by_id.sort_by(|&a, &b| t.entry(a).record.id().cmp(t.entry(b).record.id()));
            let walked: Vec<Slot> = t.by_id.iter_from((0, 0)).collect();
            assert_eq!(walked, by_id, "id order");
            for (rank, &s) in walked.iter().enumerate() {
                assert_eq!(t.by_id.rank(s) as usize, rank, "id rank");
            }
            if T::SEARCHED {
                let mut by_name = live.clone();
                by_name.sort_by(|&a, &b| {
                    let (x, y) = (t.entry(a), t.entry(b));
                    (&x.name, x.record.id()).cmp(&(&y.name, y.record.id()))
                });
                let walked: Vec<Slot> = t.by_name.iter_from((0, 0)).collect();
                assert_eq!(walked, by_name, "name order");
                for (rank, &s) in walked.iter().enumerate() {
                    assert_eq!(t.by_name.rank(s) as usize, rank, "name rank");
                }
            }
            let mut fields: BTreeMap<(usize, String), BTreeSet<Slot>> = BTreeMap::new();
            let mut words: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
            for &s in &live {
                let r = &t.entry(s).record;
                for (f, k) in r.keys() {
                    fields.entry((f, k.into_owned())).or_default().insert(s);
                }
                if T::SEARCHED {
                    let (name, summary, tags) = r.text();
                    for w in words_of(&lowered(name, summary, tags)) {
                        words.entry(w.to_owned()).or_default().insert(s);
                    }
                }
            }
            let mut got: BTreeMap<(usize, String), BTreeSet<Slot>> = BTreeMap::new();
            for (f, p) in t.lists.fields.iter().enumerate() {
                for (k, set) in &p.map {
                    assert!(!set.is_empty());
                    got.insert((f, k.clone()), members(set));
                }
            }
            assert_eq!(got, fields, "posting lists");
            let w = &t.lists.words;
            let mut got: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
            for (word, &i) in &w.ids {
                let list = &w.lists[i as usize];
                let start = w.starts[i as usize] as usize;
                assert_eq!(&w.text[start..start + word.len() + 1], format!("{word}\n"));
                if !list.is_empty() {
                    got.insert(word.to_string(), members(list));
                }
            }
            assert_eq!(got, words, "word lists");
            assert_eq!(w.dead, w.lists.iter().filter(|l| l.is_empty()).count());
        }
        orders(&index.startups);
        orders(&index.programs);
        orders(&index.applications);
        let mut status: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
        for s in 0..index.applications.slab.bound as Slot {
            if let Some(e) = index.applications.slab.get(s) {
                let joined = index.joined(&e.record);
                assert_eq!(joined_status(&index.decisions, &e.record), joined.status);
                status.entry(joined.status).or_default().insert(s);
            }
        }
        let got: BTreeMap<String, BTreeSet<Slot>> = index
            .app_status
            .map
            .iter()
            .map(|(k, v)| (k.clone(), members(v)))
            .collect();
        assert_eq!(got, status, "status lists");
    }

    #[test]
    fn every_query_matches_a_plain_filter_of_the_records() {
        let mut rng = Rng(0x6b65_7276_616e_0001);
        let mut both = Both::default();
        for _ in 0..6000 {
            both.change(&mut rng);
        }
        assert!(both.startups.len() > 2000, "{}", both.startups.len());
        let dense = |t: &Lists| {
            t.fields
                .iter()
                .flat_map(|p| p.map.values())
                .chain(&t.words.lists)
                .filter(|s| matches!(s, Set::Bits { .. }))
                .count()
        };
        assert!(dense(&both.index.startups.lists) > 5);
        check_structure(&both.index);
        let qs = searches(&mut rng, &both);
        check_startups(&both, &mut rng, &qs, 240);
        check_programs(&both, &mut rng, &qs, 120);
        check_applications(&both, &mut rng, 120);
        // Then churn: updates, removals and decisions, and again.
        for round in 0..3 {
            for _ in 0..800 {
                both.change(&mut rng);
            }
            check_structure(&both.index);
            let qs = searches(&mut rng, &both);
            check_startups(&both, &mut rng, &qs, 60);
            check_programs(&both, &mut rng, &qs, 30);
            check_applications(&both, &mut rng, 30);
            assert_eq!(
                both.index.counts().startups,
                both.startups.len(),
                "round {round}"
            );
        }
    }

    /// A ledger's records indexed at once (`load_ledger`: one merge into each order) give the
    /// index that setting them one at a time gives: parks loaded one after another, into an
    /// index that already holds some of their ids (set again, replacing them), with one id
    /// twice in a batch (the later kept), and a small ledger last (linked one at a time).
    #[test]
    fn a_ledger_loaded_at_once_indexes_as_its_records_set_one_by_one() {
        let mut rng = Rng(0x6b65_7276_616e_0002);
        let mut source = Both::default();
        for _ in 0..4000 {
            source.change(&mut rng);
        }
        let mut both = Both::default();
        let first: ParkId = PARKS[0].parse().expect("park");
        let held: Vec<RecordId> = source
            .startups
            .keys()
            .filter(|i| i.park() == &first)
            .take(50)
            .cloned()
            .collect();
        assert_eq!(held.len(), 50);
        for i in held {
            let older = gen_startup(&mut rng, i.clone());
            both.startup(i, Some(older));
        }
        for park in PARKS {
            let park: ParkId = park.parse().expect("park");
            let mine = |i: &RecordId| i.park() == &park;
            let mut records = LedgerRecords {
                startups: source
                    .startups
                    .values()
                    .filter(|r| mine(&r.id))
                    .cloned()
                    .collect(),
                programs: source
                    .programs
                    .values()
                    .filter(|r| mine(&r.id))
                    .cloned()
                    .collect(),
                applications: source
                    .apps
                    .values()
                    .filter(|r| mine(&r.id))
                    .cloned()
                    .collect(),
                decisions: source
                    .decisions
                    .iter()
                    .filter_map(|(app, by)| by.get(&park).map(|d| (app.clone(), d.clone())))
                    .collect(),
            };
            assert!(records.startups.len() > 100, "{park}");
            let twice = gen_startup(&mut rng, records.startups[7].id.clone());
            records.startups.push(twice);
            for r in &records.startups {
                both.startups.insert(r.id.clone(), r.clone());
            }
            for r in &records.programs {
                both.programs.insert(r.id.clone(), r.clone());
            }
            for r in &records.applications {
                both.apps.insert(r.id.clone(), r.clone());
            }
            for (app, d) in &records.decisions {
                both.decisions
                    .entry(app.clone())
                    .or_default()
                    .insert(park.clone(), d.clone());
            }
            both.index.load_ledger(&park, records);
            check_structure(&both.index);
        }
        // A small ledger into a large index: its records are linked one at a time.
        let late: ParkId = "tr-late-park".parse().expect("park");
        let mut records = LedgerRecords {
            startups: Vec::new(),
            programs: Vec::new(),
            applications: Vec::new(),
            decisions: Vec::new(),
        };
        for n in 0..12 {
            let i = id(late.as_str(), format!("s{n:05}"));
            records.startups.push(gen_startup(&mut rng, i));
        }
        let twice = gen_startup(&mut rng, records.startups[3].id.clone());
        records.startups.push(twice);
        assert!(records.startups.len() * MERGE_AT_LEAST < both.startups.len());
        for r in &records.startups {
            both.startups.insert(r.id.clone(), r.clone());
        }
        both.index.load_ledger(&late, records);
        check_structure(&both.index);
        assert_eq!(both.index.counts().startups, both.startups.len());
        let qs = searches(&mut rng, &both);
        check_startups(&both, &mut rng, &qs, 120);
        check_programs(&both, &mut rng, &qs, 60);
        check_applications(&both, &mut rng, 60);
    }

    #[test]
    fn removed_and_changed_records_leave_no_stale_postings() {
        let mut index = Index::default();
        let mut s = startup("kz-astana-hub", "s1", "Qazaq Sensor", "KZ", "ai");
        index.set_startup(s.id.clone(), Some(s.clone()));
        let found = |index: &Index, f: Filter| index.startups(&f).expect("page").items.len();
        let by_country = |c: &str| Filter {
            country: Some(c.into()),
            ..Filter::default()
        };
        let by_q = |q: &str| Filter {
            q: Some(q.into()),
            ..Filter::default()
        };
        assert_eq!(found(&index, by_country("kz")), 1);
        assert_eq!(found(&index, by_q("sensor")), 1);
        s.country = "UZ".into();
        s.sectors = vec!["fintech".into()];
        s.stage = "growth".into();
        s.name = "Silk Pay".into();
        s.summary = None;
        s.tags = vec![];
        index.set_startup(s.id.clone(), Some(s.clone()));
        for f in [
            by_country("KZ"),
            by_q("qazaq"),
            by_q("sensor"),
            by_q("satellite"),
            Filter {
                sector: Some("ai".into()),
                ..Filter::default()
            },
            Filter {
                stage: Some("seed".into()),
                ..Filter::default()
            },
        ] {
            assert_eq!(found(&index, f.clone()), 0, "{f:?}");
        }
        for f in [
            by_country("uz"),
            by_q("silk"),
            by_q("k p"),
            Filter {
                sector: Some("fintech".into()),
                stage: Some("growth".into()),
                ..Filter::default()
            },
        ] {
            assert_eq!(found(&index, f.clone()), 1, "{f:?}");
        }
        let named = index
            .startups(&Filter {
                sort: Sort::Name,
                ..Filter::default()
            })
            .expect("page");
        assert_eq!(named.items, vec![s.clone()]);
        index.set_startup(s.id.clone(), None);
        assert_eq!(found(&index, by_country("uz")), 0);
        assert_eq!(found(&index, by_q("silk")), 0);
        assert_eq!(found(&index, Filter::default()), 0);
        assert!(index.startup(&s.id).is_none());
        assert!(index.startups.lists.fields.iter().all(|p| p.map.is_empty()));
        assert!(index.startups.lists.words.lists.iter().all(Set::is_empty));

        // Applications: the host's decision moves the status, another park's does not, and a
        // removed application leaves no status behind.
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
        let status = |index: &Index, s: &str| {
            index
                .applications(&AppFilter {
                    status: Some(s.into()),
                    ..AppFilter::default()
                })
                .expect("page")
                .items
                .len()
        };
        let decision = |s: &str| Decision {
            status: s.into(),
            note: None,
            decided_at: None,
        };
        let host: ParkId = "kz-astana-hub".parse().expect("park");
        index.set_decision(app.id.clone(), host.clone(), Some(decision("accepted")));
        index.set_application(app.id.clone(), Some(app.clone()));
        assert_eq!(
            (status(&index, "accepted"), status(&index, "pending")),
            (1, 0)
        );
        index.set_decision(
            app.id.clone(),
            "kg-htp".parse().expect("park"),
            Some(decision("rejected")),
        );
        assert_eq!(
            (status(&index, "accepted"), status(&index, "rejected")),
            (1, 0)
        );
        index.set_decision(app.id.clone(), host.clone(), None);
        assert_eq!(
            (status(&index, "accepted"), status(&index, "pending")),
            (0, 1)
        );
        let mut withdrawn = app.clone();
        withdrawn.withdrawn = true;
        index.set_application(app.id.clone(), Some(withdrawn));
        index.set_decision(app.id.clone(), host, Some(decision("waitlisted")));
        assert_eq!(
            (status(&index, "withdrawn"), status(&index, "waitlisted")),
            (1, 0)
        );
        let mut elsewhere = app.clone();
        elsewhere.program = "kg-htp/p9".parse().expect("id");
        index.set_application(app.id.clone(), Some(elsewhere));
        assert_eq!(
            (status(&index, "rejected"), status(&index, "withdrawn")),
            (1, 0)
        );
        index.set_application(app.id.clone(), None);
        assert_eq!(status(&index, "rejected"), 0);
        assert!(index.app_status.map.is_empty());
        let no_lists = index
            .applications
            .lists
            .fields
            .iter()
            .all(|p| p.map.is_empty());
        assert!(no_lists);
        check_structure(&index);
    }

    #[test]
    fn text_search_runs_bound_the_words_that_can_match() {
        assert!(runs("").is_empty());
        assert!(runs(" -\n").is_empty());
        let r = runs("lite sen");
        assert_eq!(
            r.iter()
                .map(|r| (r.text, r.starts_word, r.ends_word))
                .collect::<Vec<_>>(),
            vec![("lite", false, true), ("sen", true, false)]
        );
        let r = runs(" a.b ");
        assert_eq!(
            r.iter()
                .map(|r| (r.text, r.starts_word, r.ends_word))
                .collect::<Vec<_>>(),
            vec![("a", true, true), ("b", true, true)]
        );
        let mut w = Words::default();
        for (s, word) in ["satellite", "sat", "nanosatellites", "lite"]
            .iter()
            .enumerate()
        {
            w.add(word, s as Slot);
        }
        let found = |run: Run<'_>| match w.hits(&run, 100) {
            Hits::Sets(sets, _) => {
                let mut v: Vec<Slot> = sets.iter().flat_map(|s| members(s)).collect();
                v.sort_unstable();
                v
            }
            Hits::Many => panic!("many"),
        };
        let run = |text, starts_word, ends_word| Run {
            text,
            starts_word,
            ends_word,
        };
        assert_eq!(found(run("sat", false, false)), vec![0, 1, 2]);
        assert_eq!(found(run("sat", true, false)), vec![0, 1]);
        assert_eq!(found(run("lite", false, true)), vec![0, 3]);
        assert_eq!(found(run("lites", false, true)), vec![2]);
        assert_eq!(found(run("sat", true, true)), vec![1]);
        assert_eq!(found(run("xyz", false, false)), Vec::<Slot>::new());
    }

    #[test]
    fn many_small_chunks_keep_order_and_ranks() {
        let mut index = Index::default();
        let mut rng = Rng(7);
        let mut ids = Vec::new();
        for i in 0..3000 {
            let s = startup(
                PARKS[i % 4],
                &format!("s{:05}", (i * 7919) % 90_000),
                &format!("N{}", rng.below(50)),
                "KZ",
                "ai",
            );
            ids.push(s.id.clone());
            index.set_startup(s.id.clone(), Some(s));
        }
        check_structure(&index);
        // Remove most, in random order: chunks empty out and merge.
        for _ in 0..2500 {
            let i = rng.below(ids.len());
            let id = ids.swap_remove(i);
            index.set_startup(id, None);
        }
        check_structure(&index);
        let all = index
            .startups(&Filter {
                limit: Some(500),
                ..Filter::default()
            })
            .expect("page");
        ids.sort();
        assert_eq!(all.items.into_iter().map(|s| s.id).collect::<Vec<_>>(), ids);
    }
}
