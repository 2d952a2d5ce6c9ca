//! Realistic sample records from a seeded generator, for the demo and for tests: the same
//! seed always gives the same records.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use kervan_protocol::records::{LOOKING_FOR, PROGRAM_KINDS, SECTORS, STAGES};

const PREFIXES: &[&str] = &[
    "Qazaq",
    "Silk",
    "Steppe",
    "Altyn",
    "Tengri",
    "Samarkand",
    "Bukhara",
    "Issyk",
    "Caspian",
    "Anatolia",
    "Ala-Too",
    "Nomad",
    "Khiva",
    "Baikonur",
    "Aral",
    "Turan",
    "Orda",
    "Kervan",
];
const SUFFIXES: &[&str] = &[
    "Labs",
    "AI",
    "Pay",
    "Logistics",
    "Health",
    "Agro",
    "Learn",
    "Cloud",
    "Robotics",
    "Energy",
    "Games",
    "Secure",
    "Trade",
    "Travel",
    "Data",
    "Mobility",
];
const WHAT: &[&str] = &[
    "crop yield forecasts from satellite images",
    "instant cross-border payments for small merchants",
    "route planning for trucks on the Middle Corridor",
    "telemedicine for rural clinics",
    "Kazakh, Uzbek and Turkish speech recognition",
    "online exams with proctoring",
    "energy monitoring for factories",
    "fraud detection for digital banks",
    "a marketplace for handmade goods",
    "cold-chain tracking for fresh produce",
];
const CITIES: &[(&str, &str)] = &[
    ("KZ", "Astana"),
    ("KZ", "Almaty"),
    ("UZ", "Tashkent"),
    ("UZ", "Samarkand"),
    ("KG", "Bishkek"),
    ("AZ", "Baku"),
    ("TR", "Istanbul"),
    ("TR", "Ankara"),
];

/// A seeded generator of sample records.
#[derive(Debug)]
pub struct Sample {
    rng: StdRng,
}

impl Sample {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    fn some<'a>(&mut self, items: &[&'a str], max: usize) -> Vec<&'a str> {
        let n = self.rng.random_range(1..=max);
        let mut out: Vec<&str> = Vec::new();
        for _ in 0..n * 3 {
            let x = self.pick(items);
            if !out.contains(&x) && out.len() < n {
                out.push(x);
            }
        }
        out
    }

    /// A startup from `country` (a city of that country where the generator knows one).
    pub fn startup(&mut self, country: &str) -> Value {
        let name = format!("{} {}", self.pick(PREFIXES), self.pick(SUFFIXES));
        let city = CITIES
            .iter()
            .filter(|(c, _)| *c == country)
            .map(|(_, city)| *city)
            .collect::<Vec<_>>();
        let city = if city.is_empty() {
            "Capital"
        } else {
            self.pick(&city)
        };
        let what = self.pick(WHAT);
        let slug: String = name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        json!({
            "name": name,
            "country": country,
            "city": city,
            "sectors": self.some(SECTORS, 3),
            "stage": self.pick(STAGES),
            "founded": self.rng.random_range(2015..=2025),
            "team_size": self.rng.random_range(2..=120),
            "website": format!("https://{slug}.example"),
            "summary": format!("{name} builds {what}."),
            "looking_for": self.some(LOOKING_FOR, 3),
            "contact": {"name": "Founder", "email": format!("hello@{slug}.example")},
            "tags": [what.split(' ').next_back().unwrap_or("startup")],
        })
    }

    /// A program hosted by a park.
    pub fn program(&mut self, host: &str) -> Value {
        let kind = self.pick(PROGRAM_KINDS);
        let title = match kind {
            "residency" => "Digital Nomad IT residency".to_owned(),
            "incubation" => "Joint incubation program".to_owned(),
            "acceleration" => "Joint acceleration program".to_owned(),
            "coworking" => "Free 24/7 workspace for visiting startups".to_owned(),
            "housing" => "Free housing for visiting startup teams".to_owned(),
            "b2b_meetings" => "B2B meetings with local corporates".to_owned(),
            "grant" => "Market-entry grant".to_owned(),
            "event" => format!("{host} demo day"),
            _ => "Joint venture fund of the technopark alliance".to_owned(),
        };
        let month = self.rng.random_range(1..=6);
        json!({
            "kind": kind,
            "title": title,
            "summary": format!("{title}, hosted by {host}, for startups of the member parks."),
            "seats": self.rng.random_range(5..=50),
            "starts": format!("2027-{month:02}-01"),
            "ends": format!("2027-{:02}-28", month + 6),
            "benefits": ["mentors", "office space"],
            "eligibility": {"countries": [], "stages": self.some(STAGES, 3)},
            "open": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kervan_protocol::records::{self, Mode};

    #[test]
    fn samples_are_valid_and_repeatable() {
        let mut a = Sample::new(7);
        let mut b = Sample::new(7);
        for _ in 0..50 {
            let s = a.startup("KZ");
            assert_eq!(s, b.startup("KZ"));
            assert_eq!(
                records::validate_input(records::STARTUP_FIELDS, &s, Mode::Create, 2026),
                Ok(())
            );
            let p = a.program("Astana Hub");
            assert_eq!(p, b.program("Astana Hub"));
            assert_eq!(
                records::validate_input(records::PROGRAM_FIELDS, &p, Mode::Create, 2026),
                Ok(())
            );
        }
    }
}
