//! Tests of the registry: names, players and their publishers, stops, holds, draining and
//! the limit at registration, 100 000 synthetic streams.

use super::*;

fn publisher(name: &str) -> NewStream {
    NewStream::publisher(name, "defaultApp")
}

#[test]
fn publisher_name_is_exclusive_until_it_finishes() {
    let registry = Registry::new("node");
    let first = registry.register_synthetic(publisher("cam")).unwrap();
    assert_eq!(
        registry.register_synthetic(publisher("cam")).unwrap_err(),
        RegistryError::AlreadyPublishing("cam".into())
    );
    assert!(registry.stop(first.media_session_id, StopReason::server("done")));
    assert!(registry.is_empty());
    registry.register_synthetic(publisher("cam")).unwrap();
}

#[test]
fn player_needs_a_publisher_and_dies_with_it() {
    let registry = Registry::new("node");
    assert_eq!(
        registry
            .register_synthetic(NewStream::player("cam", "defaultApp"))
            .unwrap_err(),
        RegistryError::NotPublishing("cam".into())
    );
    let publisher = registry.register_synthetic(publisher("cam")).unwrap();
    let player = registry
        .register_synthetic(NewStream::player("cam", "defaultApp"))
        .unwrap();
    let mut player_status = registry.watch(player.media_session_id).unwrap();
    let mut bus = registry.events();
    assert_eq!(registry.find_by_name("cam").len(), 2);
    registry.stop(publisher.media_session_id, StopReason::ClientLeft);
    assert!(registry.is_empty());
    let last = player_status.borrow_and_update().clone();
    assert_eq!(last.status, Status::Failed);
    assert_eq!(last.info, "Stopped by publisher stop");
    let first = bus.try_recv().unwrap();
    assert_eq!(first.status, Status::Unpublished);
    assert_eq!(first.media_session_id, publisher.media_session_id);
    let second = bus.try_recv().unwrap();
    assert_eq!(second.media_session_id, player.media_session_id);
    assert!(second.event_id > first.event_id);
}

#[test]
fn server_stop_of_a_player_says_why_and_leaves_the_publisher() {
    let registry = Registry::new("node");
    let publisher = registry.register_synthetic(publisher("cam")).unwrap();
    let player = registry
        .register_synthetic(NewStream::player("cam", "defaultApp"))
        .unwrap();
    let watch = registry.watch(player.media_session_id).unwrap();
    registry.stop(player.media_session_id, StopReason::server("too long"));
    assert_eq!(watch.borrow().status, Status::Failed);
    assert_eq!(watch.borrow().info, "Stopped by server: too long");
    assert!(
        watch.has_changed().is_err(),
        "the status stream ends after the final status"
    );
    assert_eq!(registry.len(), 1);
    assert!(registry.get(publisher.media_session_id).is_some());
    assert!(!registry.stop(player.media_session_id, StopReason::ClientLeft));
}

#[test]
fn draining_holds_and_the_limit_refuse_at_registration() {
    let registry = Registry::new("node");
    registry.register_synthetic(publisher("a")).unwrap();
    let handle = Arc::new(SyntheticHandle {
        registry: Arc::downgrade(&registry),
        id: std::sync::OnceLock::new(),
    });
    assert_eq!(
        registry
            .register_within(publisher("b"), handle.clone(), 1)
            .unwrap_err(),
        RegistryError::Full(1)
    );
    let a = registry.find_by_name("a")[0].clone();
    registry
        .terminate(
            std::slice::from_ref(&a),
            "out",
            TerminationSource::Rest {
                remote_address: String::new(),
            },
            StreamFilter::default(),
            Some(HoldSpec {
                filter: HoldFilter::one(&a),
                ms: 60_000,
                until_admitted: false,
            }),
        )
        .unwrap();
    assert!(matches!(
        registry.register(publisher("a"), handle.clone()),
        Err(RegistryError::Held(hold)) if hold.reason == "out"
    ));
    registry.register(publisher("b"), handle.clone()).unwrap();
    registry.drain();
    assert_eq!(
        registry.register(publisher("c"), handle).unwrap_err(),
        RegistryError::Draining
    );
}

#[test]
fn a_player_registers_only_under_the_publisher_it_was_wired_to() {
    let registry = Registry::new("node");
    let first = registry.register_synthetic(publisher("cam")).unwrap();
    registry.stop(first.media_session_id, StopReason::ClientLeft);
    registry.register_synthetic(publisher("cam")).unwrap();
    let mut player = NewStream::player("cam", "defaultApp");
    player.publisher_id = Some(first.media_session_id);
    assert_eq!(
        registry.register_synthetic(player).unwrap_err(),
        RegistryError::NotPublishing("cam".into())
    );
}

#[test]
fn holds_a_hundred_thousand_synthetic_streams() {
    let registry = Registry::new("node");
    for i in 0..100_000 {
        registry
            .register_synthetic(publisher(&format!("s{i}")))
            .unwrap();
    }
    assert_eq!(registry.len(), 100_000);
    assert_eq!(registry.find_by_name("s99999").len(), 1);
    let ids: Vec<_> = registry
        .find(|_| true)
        .into_iter()
        .map(|r| r.media_session_id)
        .collect();
    for id in ids {
        registry.stop(id, StopReason::server("bulk"));
    }
    assert!(registry.is_empty());
}
