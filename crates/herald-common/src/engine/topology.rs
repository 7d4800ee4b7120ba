//! A Redis Cluster's topology as one of its nodes sees it (`CLUSTER NODES`): which
//! primaries own which slots, which replicas follow them, which nodes are failing.
//! The gateway groups its shard channels by shard with it (one probe per shard),
//! and the monitor shows it.

use serde::{Deserialize, Serialize};

use crate::keys::SLOTS;
use crate::store::{self, Conn};

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: String,
    /// `host:port` clients use.
    pub addr: String,
    pub primary: bool,
    /// Marked failing (`fail`, or `fail?` while the others have not agreed yet).
    pub failing: bool,
    /// The primary a replica follows.
    pub primary_id: Option<String>,
    /// Inclusive slot ranges a primary serves.
    pub slots: Vec<(u16, u16)>,
}

/// A primary with its slots and replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub primary: ClusterNode,
    pub replicas: Vec<ClusterNode>,
}

impl Shard {
    pub fn owns(&self, slot: u16) -> bool {
        self.primary
            .slots
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }

    /// A slot of this shard (its first), to name a channel that lands on it.
    pub fn first_slot(&self) -> Option<u16> {
        self.primary.slots.first().map(|&(lo, _)| lo)
    }

    pub fn slot_count(&self) -> u32 {
        self.primary
            .slots
            .iter()
            .map(|&(lo, hi)| u32::from(hi - lo) + 1)
            .sum()
    }
}

/// Every node of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub nodes: Vec<ClusterNode>,
}

impl Topology {
    /// Parses a `CLUSTER NODES` reply; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Self {
        let nodes = text.lines().filter_map(parse_line).collect();
        Self { nodes }
    }

    /// The primaries that serve slots, in slot order, each with its replicas.
    pub fn shards(&self) -> Vec<Shard> {
        let mut shards: Vec<Shard> = self
            .nodes
            .iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .map(|p| Shard {
                primary: p.clone(),
                replicas: self
                    .nodes
                    .iter()
                    .filter(|r| r.primary_id.as_deref() == Some(p.id.as_str()))
                    .cloned()
                    .collect(),
            })
            .collect();
        shards.sort_by_key(|s| s.first_slot());
        shards
    }

    /// How many of the slots some primary serves.
    pub fn slots_covered(&self) -> u32 {
        self.shards().iter().map(Shard::slot_count).sum()
    }

    /// Whether every slot is served by a primary not marked failing.
    pub fn healthy(&self) -> bool {
        let shards = self.shards();
        shards.iter().all(|s| !s.primary.failing)
            && shards.iter().map(Shard::slot_count).sum::<u32>() == u32::from(SLOTS)
    }
}

fn parse_line(line: &str) -> Option<ClusterNode> {
    let mut f = line.split_whitespace();
    let id = f.next()?.to_owned();
    // `ip:port@cport[,hostname]`
    let addr = f.next()?.split('@').next()?.to_owned();
    let flags = f.next()?;
    let primary_id = f.next()?;
    let (_ping, _pong, _epoch, _link) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let flag = |name: &str| flags.split(',').any(|x| x == name);
    let slots = f
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
            None => s.parse().ok().map(|one| (one, one)),
        })
        .collect();
    Some(ClusterNode {
        id,
        addr,
        primary: flag("master"),
        failing: flag("fail") || flag("fail?"),
        primary_id: (primary_id != "-").then(|| primary_id.to_owned()),
        slots,
    })
}

/// The topology as the node the cluster connection picks sees it.
pub async fn read(conn: &Conn) -> redis::RedisResult<Topology> {
    let text: String = store::within(
        store::RESPONSE_TIMEOUT,
        "cluster topology",
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn.clone()),
    )
    .await?;
    Ok(Topology::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@40005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@40006 slave 292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
";

    #[test]
    fn reads_shards_replicas_and_failures() {
        let t = Topology::parse(NODES);
        assert_eq!(t.nodes.len(), 6);
        let shards = t.shards();
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0].primary.addr, "127.0.0.1:30001");
        assert_eq!(shards[0].primary.slots, vec![(0, 5460)]);
        assert_eq!(shards[0].replicas.len(), 1);
        assert!(shards[1].owns(5461) && !shards[1].owns(5460));
        assert!(shards[2].primary.failing);
        assert_eq!(t.slots_covered(), 16384);
        assert!(!t.healthy());
    }
}
