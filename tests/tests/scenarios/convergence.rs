use kervan_node::Collection;
use kervan_node::sample::Sample;
use kervan_tests::{Federation, entries, view};
use serde_json::json;

/// Gives each park a few startups and programs of its own.
fn write_records(fed: &mut Federation, per_park: usize) {
    let mut sample = Sample::new(42);
    for park in &mut fed.parks {
        let country = park.country.clone();
        let name = park.id.to_string();
        for _ in 0..per_park {
            park.replica()
                .create(Collection::Startups, None, &sample.startup(&country))
                .expect("create startup");
        }
        park.replica()
            .create(
                Collection::Programs,
                Some("residency"),
                &sample.program(&name),
            )
            .expect("create program");
    }
}

/// Two parks that send each other their bundles, in either order, end with the same digest
/// and the same answers to every query.
#[test]
fn two_parks_converge_in_both_orders() {
    for first in [0, 1] {
        let mut fed = Federation::founding(2);
        write_records(&mut fed, 4);
        let second = 1 - first;
        let a = fed.park(first).export();
        fed.park(second).import(&a);
        let b = fed.park(second).export();
        fed.park(first).import(&b);
        let (d0, d1) = (fed.park(0).digest(), fed.park(1).digest());
        assert_eq!(d0, d1, "digests differ when park {first} sends first");
        assert_eq!(fed.park(0).view(), fed.park(1).view());
        assert_eq!(
            fed.park(0).view()["startups"].as_array().map(Vec::len),
            Some(8)
        );
    }
}

/// Three parks exchange startups, programs, an application across parks and the host's
/// decision. Then the three bundles reach fresh observers in all six orders, and with every
/// bundle's changes reversed (so most wait for their dependencies): every observer ends with
/// the parks' digest and the parks' query answers.
#[test]
fn three_parks_converge_whatever_order_bundles_arrive() {
    let mut fed = Federation::founding(3);
    write_records(&mut fed, 3);
    // Uzbekistan's startup applies to Astana Hub's residency; Astana Hub accepts.
    let astana = fed.park(0).export();
    fed.park(1).import(&astana);
    let startup = fed.park(1).view()["startups"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["park"] == "uz-it-park"))
        .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
        .expect("a startup of uz-it-park");
    let app = fed
        .park(1)
        .replica()
        .create(
            Collection::Applications,
            None,
            &json!({"startup": startup, "program": "kz-astana-hub/residency",
                    "message": "We would like to join the Digital Nomad residency."}),
        )
        .expect("apply");
    let uz = fed.park(1).export();
    fed.park(0).import(&uz);
    fed.park(0)
        .replica()
        .decide(
            &app,
            &json!({"status": "accepted", "note": "Welcome to Astana"}),
        )
        .expect("decide");
    fed.exchange_all();

    let digest = fed.park(0).digest();
    let expected = fed.park(0).view();
    for i in 1..3 {
        assert_eq!(fed.park(i).digest(), digest, "park {i} digest");
        assert_eq!(fed.park(i).view(), expected, "park {i} view");
    }
    let apps = expected["applications"].as_array().expect("applications");
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0]["status"], "accepted");

    let bundles: Vec<Vec<Vec<u8>>> = (0..3).map(|i| entries(&fed.park(i).export())).collect();
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        for reversed in [false, true] {
            let mut observer = fed.observer();
            for i in order {
                let mut changes = bundles[i].clone();
                if reversed {
                    changes.reverse();
                }
                observer.ingest(changes);
            }
            assert_eq!(
                observer.replica.digest(),
                digest,
                "order {order:?}, reversed {reversed}"
            );
            assert_eq!(observer.replica.pending_count(), 0);
            assert_eq!(view(&observer.replica), expected, "order {order:?}");
        }
    }
}
