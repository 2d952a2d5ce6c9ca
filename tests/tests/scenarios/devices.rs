//! A park's further devices: a device joins, cannot write until its park registers it (and
//! leaves no trace when refused), then writes, and its park's other nodes accept its changes.

use kervan_node::sample::Sample;
use kervan_node::{Collection, ReplicaError, Store};
use kervan_tests::{Federation, Park};

/// Astana Hub adds a backup server. Before its registration arrives the server's write is
/// refused with a clear reason and nothing is stored; the retry after the registration takes
/// the same seq without being mistaken for equivocation, and both Astana Hub nodes and IT
/// Park Uzbekistan converge.
#[test]
fn a_second_device_writes_once_registered_and_never_freezes_itself() {
    let mut fed = Federation::founding(2);
    let (mut backup, card) = Park::init("kz-astana-hub", "Astana Hub", "KZ", "Astana");
    let joined = backup
        .dir
        .join(&fed.genesis)
        .expect("a further device joins");
    assert!(!joined.device_listed && !joined.started_ledger);
    let astana = fed.park(0).export();
    backup.import(&astana);

    let mut sample = Sample::new(11);
    let before = backup.replica().store().change_count();
    let err = backup
        .replica()
        .create(Collection::Startups, Some("early"), &sample.startup("KZ"))
        .expect_err("not registered yet");
    assert!(
        matches!(err, ReplicaError::OwnChangeRefused(ref why) if why.contains("device")),
        "{err}"
    );
    assert_eq!(
        backup.replica().store().change_count(),
        before,
        "a refused write leaves nothing"
    );

    fed.park(0)
        .replica()
        .add_device(&card)
        .expect("register the backup server");
    let registration = fed.park(0).export();
    backup.import(&registration);
    let id = backup
        .replica()
        .create(Collection::Startups, Some("early"), &sample.startup("KZ"))
        .expect("registered now");
    backup.restart();
    assert!(backup.replica().index().startup(&id).is_some());

    let from_backup = backup.export();
    for i in 0..2 {
        let reports = fed.park(i).import(&from_backup);
        assert!(
            reports
                .iter()
                .all(|r| !matches!(r.outcome, kervan_node::Outcome::Rejected { .. })),
            "{reports:?}"
        );
    }
    fed.exchange_all();
    let everything = fed.park(0).export();
    backup.import(&everything);
    assert_eq!(fed.park(0).digest(), backup.digest());
    assert_eq!(fed.park(1).digest(), backup.digest());
    assert!(fed.park(1).replica().index().startup(&id).is_some());
}
