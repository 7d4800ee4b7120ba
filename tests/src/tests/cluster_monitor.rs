//! The monitor's view of the Redis Cluster it runs on: the shards and their
//! primaries in the overview and in the metrics, through a primary's death and its
//! replica's takeover.

use std::collections::BTreeSet;

use herald_proto::monitor::{Overview, REDIS_CLUSTER_SLOTS, RedisClusterView};

use crate::cluster::Node;
use crate::{Redis, RedisCluster, Service, ServiceBuilder, eventually, within};

async fn overview(m: &Service) -> Option<Overview> {
    let r = reqwest::get(format!("{}/api/v1/overview", m.http()))
        .await
        .ok()?;
    r.error_for_status().ok()?.json().await.ok()
}

async fn metrics(m: &Service) -> Option<String> {
    let r = reqwest::get(format!("{}/metrics", m.http())).await.ok()?;
    r.error_for_status().ok()?.text().await.ok()
}

fn addr(n: &Node) -> String {
    format!("127.0.0.1:{}", n.port)
}

fn primaries_of(v: &RedisClusterView) -> BTreeSet<&str> {
    v.shards.iter().map(|s| s.primary.as_str()).collect()
}

/// Whether every shard's primary and replica are up and every slot is served.
fn whole(v: &RedisClusterView) -> bool {
    v.shards
        .iter()
        .all(|s| s.primary_up && s.replicas == 1 && s.replicas_up == 1)
        && v.slots_covered == REDIS_CLUSTER_SLOTS
}

/// `CONFIG SET cluster-replica-no-failover` on one node.
async fn hold_failover(cluster: &RedisCluster, port: u16, hold: bool) {
    let mut c = cluster.node_conn(port).await;
    let () = within(
        "CONFIG SET cluster-replica-no-failover",
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-replica-no-failover")
            .arg(if hold { "yes" } else { "no" })
            .query_async(&mut c),
    )
    .await
    .expect("config set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_follows_a_primary_down_and_its_replica_taking_over() {
    let mut cluster = RedisCluster::start().await;
    let m = ServiceBuilder::new("monitor").on(&cluster).spawn().await;
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3);
    let want: BTreeSet<String> = primaries.iter().map(addr).collect();

    let v = eventually("the whole Redis Cluster in the overview", || async {
        let v = overview(&m).await?.redis_cluster?;
        (v.shards.len() == 3 && whole(&v)).then_some(v)
    })
    .await;
    assert_eq!(
        primaries_of(&v),
        want.iter().map(String::as_str).collect(),
        "{v:?}"
    );
    for s in &v.shards {
        let p = primaries
            .iter()
            .find(|p| addr(p) == s.primary)
            .expect("a primary");
        assert_eq!(s.slots, p.slot_count(), "{s:?}");
    }
    let text = eventually("the Redis Cluster gauges", || async {
        let t = metrics(&m).await?;
        t.contains("herald_redis_cluster_primaries_up 3")
            .then_some(t)
    })
    .await;
    for line in [
        "herald_redis_cluster_shards 3",
        "herald_redis_cluster_slots_covered 16384",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }

    // Its replica holds back from taking over, so that the dead primary stays in
    // place, with its slots unserved, for as long as the check takes.
    let victim = primaries[0].clone();
    let heir = cluster
        .replicas()
        .await
        .into_iter()
        .find(|r| r.primary_id.as_deref() == Some(victim.id.as_str()))
        .expect("the primary has a replica");
    hold_failover(&cluster, heir.port, true).await;
    cluster.kill_primary(victim.port).await;

    let uncovered = REDIS_CLUSTER_SLOTS - victim.slot_count();
    let down = eventually("the killed primary shown down", || async {
        let o = overview(&m).await?;
        let v = o.redis_cluster.as_ref()?;
        let s = v.shards.iter().find(|s| s.primary == addr(&victim))?;
        (!s.primary_up && v.slots_covered == uncovered).then_some(o)
    })
    .await;
    let v = down.redis_cluster.as_ref().expect("a topology");
    assert_eq!(v.shards.len(), 3, "{v:?}");
    assert_eq!(v.shards.iter().filter(|s| s.primary_up).count(), 2, "{v:?}");
    // Every slot must be served for the cluster to answer a keyed command: the rest
    // of the overview is the last sample, the topology is current.
    assert!(down.stale, "{down:?}");
    eventually("the gauges to show a primary down", || async {
        let t = metrics(&m).await?;
        (t.contains("herald_redis_cluster_primaries_up 2")
            && t.contains(&format!("herald_redis_cluster_slots_covered {uncovered}")))
        .then_some(())
    })
    .await;

    hold_failover(&cluster, heir.port, false).await;
    let promoted = cluster.wait_promoted(victim.port).await;
    assert_eq!(promoted.id, heir.id);
    let want: BTreeSet<String> = cluster.primaries().await.iter().map(addr).collect();
    assert!(want.contains(&addr(&promoted)) && !want.contains(&addr(&victim)));
    let o = eventually("the replica shown as its shard's primary", || async {
        let o = overview(&m).await?;
        let v = o.redis_cluster.as_ref()?;
        let all_up = v.shards.iter().all(|s| s.primary_up);
        (!o.stale
            && all_up
            && v.slots_covered == REDIS_CLUSTER_SLOTS
            && primaries_of(v) == want.iter().map(String::as_str).collect())
        .then_some(o)
    })
    .await;
    let v = o.redis_cluster.expect("a topology");
    let taken = v
        .shards
        .iter()
        .find(|s| s.primary == addr(&promoted))
        .expect("the promoted replica's shard");
    // The dead primary does not come back as its replica: the shard has none now.
    assert_eq!((taken.slots, taken.replicas), (victim.slot_count(), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_redis_has_no_cluster_part() {
    let redis = Redis::start().await;
    let m = ServiceBuilder::new("monitor").redis(&redis).spawn().await;
    let o = eventually("a fresh overview", || async {
        overview(&m).await.filter(|o| !o.stale)
    })
    .await;
    assert_eq!(o.redis_cluster, None);
    let text = metrics(&m).await.expect("metrics");
    assert!(text.contains("herald_cluster_nodes"), "{text}");
    assert!(!text.contains("herald_redis_cluster"), "{text}");
}
