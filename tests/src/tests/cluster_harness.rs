//! The Redis Cluster harness itself ([`RedisCluster`]): it forms a real cluster of
//! three primaries and three replicas, computes hash slots as Redis does, survives a
//! primary's crash by failing over, and moves slots with their keys.

use std::collections::BTreeMap;
use std::time::Instant;

use redis::AsyncCommands;

use crate::RedisCluster;
use crate::cluster::{Node, SLOTS, slot_of};

/// Keys whose slots cover the hash-tag rules and their edge cases.
const TRICKY_KEYS: &[&str] = &[
    "",
    "foo",
    "bar",
    "somekey",
    "foo{hash_tag}",
    "bar{hash_tag}",
    "{user1000}.following",
    "{user1000}.followers",
    "{}x",
    "x{}",
    "{}",
    "{",
    "}",
    "{{}}",
    "{{x}}",
    "a{b}c{d}",
    "a{b}c",
    "}{x}",
    "}{x",
    "{x",
    "x}",
    "{ }",
    "{a}{b}",
    "a{}b{c}",
    "herald:{room:42}:history",
    "herald:{room:42}:presence",
    "ünïcödé",
    "{ü}x",
    "key with spaces",
    "123456789",
];

/// Keys not in [`TRICKY_KEYS`], to compare many slots.
fn plain_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key:{i}")).collect()
}

/// `count` distinct keys whose slots the node serves.
fn keys_on(node: &Node, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("on-{}:{i}", node.port))
        .filter(|k| node.owns(slot_of(k)))
        .take(count)
        .collect()
}

/// Asserts the primaries serve every slot exactly once.
fn assert_slots_covered(primaries: &[Node]) {
    let mut ranges: Vec<(u16, u16)> = primaries.iter().flat_map(|n| n.slots.clone()).collect();
    ranges.sort_unstable();
    let mut next = 0u32;
    for (lo, hi) in ranges {
        assert_eq!(
            u32::from(lo),
            next,
            "slots not covered exactly once: {primaries:?}"
        );
        next = u32::from(hi) + 1;
    }
    assert_eq!(
        next,
        u32::from(SLOTS),
        "slots not all covered: {primaries:?}"
    );
}

#[test]
fn slot_of_matches_known_slots() {
    // From the Redis documentation (CLUSTER KEYSLOT, the cluster specification).
    assert_eq!(slot_of("foo"), 12182);
    assert_eq!(slot_of("somekey"), 11058);
    assert_eq!(slot_of("foo{hash_tag}"), 2515);
    assert_eq!(slot_of("bar{hash_tag}"), 2515);
    assert_eq!(slot_of("123456789"), 0x31C3 % SLOTS);
    assert_eq!(slot_of(""), 0);
    assert_eq!(
        slot_of("{user1000}.following"),
        slot_of("{user1000}.followers")
    );
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    // An empty tag hashes the whole key; only the first tag counts.
    assert_eq!(slot_of("a{b}c{d}"), slot_of("b"));
    assert_eq!(slot_of("}{x}"), slot_of("x"));
    assert_ne!(slot_of("{}x"), slot_of("x"));
    assert_eq!(slot_of("{{x}}"), slot_of("{x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_with_three_primaries_each_replicated_and_routes_keys() {
    let started = Instant::now();
    let cluster = RedisCluster::start().await;
    eprintln!("the cluster started in {:?}", started.elapsed());

    let ports = cluster.ports();
    assert_eq!(ports.len(), 6);
    let seeds: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    assert_eq!(cluster.seeds(), seeds.join(","));

    let primaries = cluster.primaries().await;
    let replicas = cluster.replicas().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert_slots_covered(&primaries);
    for p in &primaries {
        assert!(p.primary && p.primary_id.is_none(), "{p:?}");
        let theirs = replicas
            .iter()
            .filter(|r| r.primary_id.as_deref() == Some(p.id.as_str()))
            .count();
        assert_eq!(
            theirs, 1,
            "primary {p:?} has {theirs} replicas: {replicas:?}"
        );
    }
    for r in &replicas {
        assert!(!r.primary && r.slots.is_empty(), "{r:?}");
    }

    // slot_of answers as Redis does.
    let mut node = cluster.node_conn(ports[0]).await;
    let keys: Vec<String> = TRICKY_KEYS
        .iter()
        .map(|&k| k.to_owned())
        .chain(plain_keys(30))
        .collect();
    for key in &keys {
        let redis_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut node)
            .await
            .expect("CLUSTER KEYSLOT");
        assert_eq!(slot_of(key), redis_slot, "slot of {key:?}");
    }

    // Keys are written and read through the cluster, and each lives on the primary of
    // its slot.
    let mut conn = cluster.conn().await;
    let keys = plain_keys(300);
    for (i, key) in keys.iter().enumerate() {
        let () = conn.set(key, i).await.expect("SET");
    }
    let mut per_primary: BTreeMap<u16, usize> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        let got: usize = conn.get(key).await.expect("GET");
        assert_eq!(got, i, "{key}");
        let owner = primaries
            .iter()
            .find(|p| p.owns(slot_of(key)))
            .expect("an owner");
        *per_primary.entry(owner.port).or_default() += 1;
    }
    assert_eq!(per_primary.len(), 3, "keys spread over every primary");
    for p in &primaries {
        let mut direct = cluster.node_conn(p.port).await;
        for (i, key) in keys.iter().enumerate().filter(|(_, k)| p.owns(slot_of(k))) {
            let got: usize = direct.get(key).await.expect("GET on the owning node");
            assert_eq!(got, i, "{key} on :{}", p.port);
        }
    }
    let owner = cluster.primary_for_slot(slot_of("foo")).await;
    assert!(owner.owns(12182), "{owner:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_to_its_replica_with_its_keys() {
    let mut cluster = RedisCluster::start().await;
    let victim = cluster.primaries().await.remove(0);
    let replica = cluster
        .replicas()
        .await
        .into_iter()
        .find(|r| r.primary_id.as_deref() == Some(victim.id.as_str()))
        .expect("the victim's replica");

    // Keys on the victim, acknowledged by its replica before the crash.
    let keys = keys_on(&victim, 50);
    let mut direct = cluster.node_conn(victim.port).await;
    for key in &keys {
        let () = direct.set(key, format!("v-{key}")).await.expect("SET");
    }
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query_async(&mut direct)
        .await
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica acknowledged the writes");

    cluster.kill_primary(victim.port).await;
    let killed = Instant::now();
    let promoted = cluster.wait_promoted(victim.port).await;
    eprintln!("the replica took over in {:?}", killed.elapsed());
    assert_eq!(promoted.id, replica.id);
    assert_eq!(promoted.port, replica.port);
    assert!(promoted.primary);
    assert_eq!(promoted.slots, victim.slots);

    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    assert!(primaries.iter().all(|p| p.port != victim.port));
    assert_slots_covered(&primaries);
    for key in &keys {
        assert_eq!(cluster.primary_for_slot(slot_of(key)).await.id, promoted.id);
    }
    let mut conn = cluster.conn().await;
    for key in &keys {
        let got: Option<String> = conn.get(key).await.expect("GET");
        assert_eq!(got.as_deref(), Some(format!("v-{key}").as_str()), "{key}");
    }

    // The crashed node comes back as the replica of its successor.
    let back = cluster.restart_node(victim.port).await;
    assert_eq!(back.id, victim.id);
    assert!(!back.primary, "{back:?}");
    assert_eq!(back.primary_id.as_deref(), Some(promoted.id.as_str()));
    assert_eq!(cluster.replicas().await.len(), 3);
    let mut conn = cluster.conn().await;
    let () = conn.set(&keys[0], "after").await.expect("SET");
    let got: String = conn.get(&keys[0]).await.expect("GET");
    assert_eq!(got, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_moves_slots_with_their_keys() {
    let cluster = RedisCluster::start().await;
    let primaries = cluster.primaries().await;
    let (from, to) = (&primaries[0], &primaries[1]);

    // A key in every slot of `from`, so whichever slots move carry keys.
    let mut by_slot: BTreeMap<u16, String> = BTreeMap::new();
    let wanted = usize::try_from(from.slot_count()).expect("count");
    for i in 0.. {
        let key = format!("slot-key:{i}");
        let slot = slot_of(&key);
        if from.owns(slot) {
            by_slot.entry(slot).or_insert(key);
            if by_slot.len() == wanted {
                break;
            }
        }
    }
    let mut direct = cluster.node_conn(from.port).await;
    let mut pipe = redis::pipe();
    for key in by_slot.values() {
        pipe.set(key, format!("v-{key}")).ignore();
    }
    let () = pipe.query_async(&mut direct).await.expect("SETs");

    let started = Instant::now();
    cluster.reshard(from.port, to.port, 100).await;
    eprintln!("100 slots moved in {:?}", started.elapsed());

    let from_after = cluster.node(from.port).await;
    let to_after = cluster.node(to.port).await;
    let moved: Vec<u16> = by_slot
        .keys()
        .copied()
        .filter(|&s| !from_after.owns(s))
        .collect();
    assert_eq!(moved.len(), 100, "{from_after:?}");
    assert_eq!(from_after.slot_count() + 100, from.slot_count());
    assert_eq!(to_after.slot_count(), to.slot_count() + 100);
    assert_slots_covered(&cluster.primaries().await);

    let mut conn = cluster.conn().await;
    let mut on_to = cluster.node_conn(to.port).await;
    for slot in &moved {
        let key = &by_slot[slot];
        assert_eq!(
            cluster.primary_for_slot(*slot).await.id,
            to.id,
            "slot {slot}"
        );
        assert!(to_after.owns(*slot));
        let want = format!("v-{key}");
        let got: String = conn.get(key).await.expect("GET through the cluster");
        assert_eq!(got, want);
        let got: String = on_to.get(key).await.expect("GET on the new owner");
        assert_eq!(got, want);
        let left: redis::RedisResult<Option<String>> = direct.get(key).await;
        assert!(
            left.is_err(),
            "the old owner still answers for {key}: {left:?}"
        );
    }
    // Keys that stayed are still where they were.
    for (slot, key) in by_slot
        .iter()
        .filter(|(s, _)| from_after.owns(**s))
        .take(50)
    {
        let got: String = direct.get(key).await.expect("GET on the old owner");
        assert_eq!(got, format!("v-{key}"), "slot {slot}");
    }
}
