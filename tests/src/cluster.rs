//! A real Redis Cluster for end-to-end tests: six `redis-server`s in cluster mode on
//! loopback TCP ports (three primaries, each with one replica), joined by
//! `redis-cli --cluster create`, as an operator builds one.
//!
//! The scenarios that matter for a cluster client (MOVED and ASK redirections, a
//! primary dying and its replica taking over, slots moving with their keys) happen here
//! for real: [`RedisCluster::kill_primary`] SIGKILLs a node, [`RedisCluster::reshard`]
//! migrates slots live with `redis-cli --cluster reshard`.
//!
//! Every wait has a timeout ([`patience`](crate::patience)), and every wait for the
//! cluster ends only when all its live nodes agree on one topology, so a test never
//! acts on a cluster that is still converging. Every server is killed and its
//! directory removed when the [`RedisCluster`] drops.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use redis::FromRedisValue;
use tokio::process::{Child, Command};

use crate::{REDIS_TCP_PORTS, eventually, within};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// A node's cluster bus listens on its port plus this (fixed by Redis).
const BUS_OFFSET: u16 = 10_000;

/// The ports nodes are given: inside [`REDIS_TCP_PORTS`] with their bus ports
/// (20,000-21,999 and 30,000-31,999), so neither is ever handed to a port-0 bind (both
/// are below Linux's ephemeral range); a clash with another test's fixed port makes
/// the server exit, and another port is tried.
const CLUSTER_PORTS: std::ops::Range<u16> = REDIS_TCP_PORTS.start..REDIS_TCP_PORTS.end - BUS_OFFSET;

/// Three primaries so that slots are split and a failure leaves a majority of
/// primaries to vote the failover; a replica each so every primary can fail over.
const PRIMARIES: usize = 3;
const NODES: usize = 2 * PRIMARIES;
/// The longest a `redis-cli --cluster reshard` may take.
const RESHARD_PATIENCE: Duration = Duration::from_secs(60);

/// A node as a cluster's `CLUSTER NODES` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// The primary a replica replicates (`None` for a primary).
    pub primary_id: Option<String>,
    /// Inclusive slot ranges, ascending (a replica's are empty).
    pub slots: Vec<(u16, u16)>,
}

impl Node {
    /// Whether the node serves `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }

    /// How many slots the node serves.
    pub fn slot_count(&self) -> u32 {
        self.slots
            .iter()
            .map(|&(lo, hi)| u32::from(hi - lo) + 1)
            .sum()
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (what is
/// between the first `{` and the next `}`, when that is not empty) or else of the
/// whole key, modulo 16384. Tests use it to put keys on the node they mean to.
pub fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let len = rest.iter().position(|&b| b == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// One `redis-server` of the cluster, in a directory of its own (where its
/// `nodes-<port>.conf` keeps its identity across a restart).
#[derive(Debug)]
struct Server {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server and waits until it answers; false if it exited first (its
    /// port or bus port was taken).
    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            // A node unreachable for a second is failed over: failover takes seconds.
            .args(["--cluster-node-timeout", "1000"])
            // A replica may take over however long it has been cut off from its primary
            // (a test kills primaries at any moment), and a replica never moves to
            // another primary on its own, so the topology is what the test made it.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-allow-replica-migration", "no"])
            // A replica syncs as soon as it attaches instead of 5 s later, so the
            // cluster is fully replicated (and `WAIT` works) right after it forms.
            .args(["--repl-diskless-sync-delay", "0"]);
        let child = crate::spawn_redis_server(&mut cmd, self.dir.path());
        let port = self.port;
        let pid = child.id().expect("a running child has a pid").to_string();
        let child = self.child.insert(child);
        // Another test's server may hold the port (ours then exits): only an answer
        // from our own process counts.
        let what = format!("cluster node :{port} to answer");
        let answers = eventually(&what, || {
            let pid = pid.clone();
            async move {
                let info: String = query(port, redis::cmd("INFO").arg("server")).await?;
                match info_field(&info, "process_id") {
                    Some(p) if p == pid => Ok(()),
                    other => Err(format!("process {other:?} answers on :{port}, not {pid}")),
                }
            }
        });
        let answered = tokio::select! {
            _ = answers => true,
            _ = child.wait() => false,
        };
        if !answered {
            self.child = None;
        }
        answered
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A node line of `CLUSTER NODES`, with what [`Node`] leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    node: Node,
    /// The line is the answering node itself.
    myself: bool,
    /// Flagged `fail` or `fail?` by the answering node.
    failing: bool,
    /// Flagged `handshake` or `noaddr`: not a settled member yet.
    joining: bool,
    connected: bool,
    /// Slots being migrated or imported (`[slot->-id]`, `[slot-<-id]`).
    open_slots: bool,
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch>
/// <link> <slots>...`.
fn parse_nodes(text: &str) -> Result<Vec<Entry>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bad = || format!("unexpected CLUSTER NODES line {line:?}");
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return Err(bad());
            }
            let addr = f[1].split(['@', ',']).next().ok_or_else(bad)?;
            let port = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .ok_or_else(bad)?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let mut slots = Vec::new();
            let mut open_slots = false;
            for s in &f[8..] {
                if s.starts_with('[') {
                    open_slots = true;
                    continue;
                }
                let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                slots.push((
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                ));
            }
            slots.sort_unstable();
            let primary = flags.contains(&"master");
            Ok(Entry {
                node: Node {
                    id: f[0].to_owned(),
                    port,
                    primary,
                    primary_id: (!primary && f[3] != "-").then(|| f[3].to_owned()),
                    slots,
                },
                myself: flags.contains(&"myself"),
                failing: flags.iter().any(|&f| f == "fail" || f == "fail?"),
                joining: flags.iter().any(|&f| f == "handshake" || f == "noaddr"),
                connected: f[7] == "connected",
                open_slots,
            })
        })
        .collect()
}

/// A field of a `CLUSTER INFO` or `INFO` answer.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Runs one command on the node at `port` over a fresh connection; any failure
/// (including a slow answer) is an `Err` saying which node and what.
async fn query<T: FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let attempt = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut c).await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("node :{port}: {e}")),
        Err(_) => Err(format!("node :{port} did not answer in 2 s")),
    }
}

/// Runs `redis-cli` with `args` to completion; (success, stdout and stderr).
async fn redis_cli(args: &[String]) -> (bool, String) {
    redis_cli_for(args, crate::patience()).await
}

/// [`redis_cli`] bounded by `bound` instead of the harness's patience (a bulk
/// operation whose length grows with its size and with the machine's load).
async fn redis_cli_for(args: &[String], bound: Duration) -> (bool, String) {
    let what = format!("redis-cli {}", args.join(" "));
    let run = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(bound, run)
        .await
        .unwrap_or_else(|_| panic!("timed out after {bound:?} waiting for {what}"))
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): install redis-tools"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The members one node reports, by id, each with whether it is failing: what every
/// live node must report alike for the cluster to be at rest.
type Topology = BTreeMap<String, (Node, bool)>;

/// A primary as it was when [`RedisCluster::kill_primary`] killed it.
#[derive(Debug)]
struct Killed {
    node: Node,
    replica_ids: Vec<String>,
}

/// A private six-node Redis Cluster (three primaries, three replicas) on loopback TCP
/// ports; every server is killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct RedisCluster {
    servers: Vec<Server>,
    killed: BTreeMap<u16, Killed>,
}

impl RedisCluster {
    /// Starts six nodes on free ports, joins them into a cluster of three primaries
    /// with a replica each, and waits until every node serves all slots, agrees on the
    /// topology with the others, and every replica is in sync with its primary.
    pub async fn start() -> Self {
        let mut servers: Vec<Server> = Vec::with_capacity(NODES);
        while servers.len() < NODES {
            let mut tries = 0;
            loop {
                tries += 1;
                assert!(tries <= 20, "redis-server found no free port in 20 tries");
                let port = rand::random_range(CLUSTER_PORTS);
                if servers.iter().any(|s| s.port == port) {
                    continue;
                }
                let mut server = Server {
                    port,
                    child: None,
                    dir: tempfile::tempdir().expect("temp dir"),
                };
                if server.spawn().await {
                    servers.push(server);
                    break;
                }
            }
        }
        let cluster = Self {
            servers,
            killed: BTreeMap::new(),
        };
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        let (ok, out) = redis_cli(&args).await;
        assert!(ok, "redis-cli --cluster create failed:\n{out}");
        cluster.settle("the new cluster to settle").await;
        cluster
    }

    /// Every node's port, as started (killed ones included).
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// The seed list a cluster client is given (`HERALD_REDIS_CLUSTER`): every node's
    /// URL, comma-separated.
    pub fn seeds(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The primaries the cluster reports now (failed ones left out), by port.
    pub async fn primaries(&self) -> Vec<Node> {
        self.members()
            .await
            .into_iter()
            .filter(|n| n.primary)
            .collect()
    }

    /// The replicas the cluster reports now (failed ones left out), by port.
    pub async fn replicas(&self) -> Vec<Node> {
        self.members()
            .await
            .into_iter()
            .filter(|n| !n.primary)
            .collect()
    }

    /// The primary serving `slot` now.
    pub async fn primary_for_slot(&self, slot: u16) -> Node {
        assert!(slot < SLOTS, "slot {slot} out of range");
        self.primaries()
            .await
            .into_iter()
            .find(|n| n.owns(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// The node on `port`, as the cluster reports it now.
    pub async fn node(&self, port: u16) -> Node {
        self.members()
            .await
            .into_iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no live cluster node on port {port}"))
    }

    /// A cluster connection (from the live nodes' addresses), for assertions.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self
            .live_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        let client = redis::cluster::ClusterClient::new(seeds).expect("cluster seeds");
        within("a Redis Cluster connection", client.get_async_connection())
            .await
            .expect("cluster connection")
    }

    /// A plain connection to one node (no redirections followed), for assertions on
    /// where a key lives and for node-local commands (`WAIT`, `CLUSTER ...`).
    pub async fn node_conn(&self, port: u16) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        // Longer than any command the tests send it waits for (the client's default
        // is 500 ms, shorter than a `WAIT` for a replica's acknowledgement).
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        within(
            &format!("a connection to cluster node :{port}"),
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .expect("node connection")
    }

    /// SIGKILLs the primary on `port`, as in a crash: what it had not replicated is
    /// lost. [`RedisCluster::wait_promoted`] waits for its replica to take over.
    pub async fn kill_primary(&mut self, port: u16) {
        let members = self.members().await;
        let node = members
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no live cluster node on port {port}"))
            .clone();
        assert!(node.primary, "node :{port} is a replica, not a primary");
        let replica_ids = members
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(node.id.as_str()))
            .map(|n| n.id.clone())
            .collect();
        let server = self.server_mut(port);
        if let Some(mut child) = server.child.take() {
            let _ = child.kill().await;
        }
        self.killed.insert(port, Killed { node, replica_ids });
    }

    /// Waits until a replica of the primary killed on `dead_port` has taken over: it
    /// reports itself primary of all the dead one's slots, every live node agrees, and
    /// every live node reports `cluster_state:ok`. Returns the new primary.
    pub async fn wait_promoted(&self, dead_port: u16) -> Node {
        let killed = self
            .killed
            .get(&dead_port)
            .unwrap_or_else(|| panic!("no primary was killed on port {dead_port}"));
        assert!(
            !killed.replica_ids.is_empty(),
            "the primary killed on :{dead_port} had no replica to take over"
        );
        let promoted = eventually(
            &format!("a replica of :{dead_port} to take over its slots"),
            || async {
                let mut promoted: Option<Node> = None;
                // The heir's own view is among these: it must report itself primary.
                for port in self.live_ports() {
                    let entries = self.view(port).await?;
                    let heir = entries
                        .iter()
                        .find(|e| {
                            e.node.primary
                                && !e.failing
                                && killed.replica_ids.contains(&e.node.id)
                                && killed
                                    .node
                                    .slots
                                    .iter()
                                    .all(|&(lo, hi)| (lo..=hi).all(|s| e.node.owns(s)))
                        })
                        .ok_or_else(|| {
                            format!("node :{port} sees no replica of :{dead_port} in its place")
                        })?;
                    if let Some(p) = &promoted
                        && p.id != heir.node.id
                    {
                        return Err(format!(
                            "nodes disagree on the new primary (:{} and :{})",
                            p.port, heir.node.port
                        ));
                    }
                    let info: String = query(port, redis::cmd("CLUSTER").arg("INFO")).await?;
                    if info_field(&info, "cluster_state") != Some("ok") {
                        return Err(format!("node :{port} reports the cluster not ok"));
                    }
                    promoted = Some(heir.node.clone());
                }
                promoted.ok_or_else(|| "no live node".to_owned())
            },
        )
        .await;
        // Then the rest: the dead node marked failed everywhere, every replica linked.
        self.settle("the cluster to settle after the failover")
            .await;
        promoted
    }

    /// Starts the node on `port` again (after [`RedisCluster::kill_primary`]), from the
    /// cluster state it saved: it rejoins, as a replica of whichever node took its
    /// slots. Waits until the cluster has settled with it and returns it.
    pub async fn restart_node(&mut self, port: u16) -> Node {
        let server = self.server_mut(port);
        assert!(!server.running(), "node :{port} is running");
        assert!(
            server.spawn().await,
            "node :{port} did not restart (its port was taken)"
        );
        self.killed.remove(&port);
        self.settle(&format!("the cluster to settle with :{port} back"))
            .await;
        self.node(port).await
    }

    /// Moves `slots` slots (within [`RESHARD_PATIENCE`]), and their keys, from the primary on `from_port` to the one
    /// on `to_port` with `redis-cli --cluster reshard` (live `MIGRATE`s, clients
    /// redirected with ASK meanwhile), then waits until the cluster has settled.
    pub async fn reshard(&self, from_port: u16, to_port: u16, slots: u32) {
        let members = self.members().await;
        let id = |port: u16| {
            members
                .iter()
                .find(|n| n.port == port && n.primary)
                .unwrap_or_else(|| panic!("no live primary on port {port}"))
                .id
                .clone()
        };
        let (from, to) = (id(from_port), id(to_port));
        let args = [
            "--cluster".to_owned(),
            "reshard".to_owned(),
            format!("127.0.0.1:{}", self.live_ports()[0]),
            "--cluster-from".to_owned(),
            from,
            "--cluster-to".to_owned(),
            to,
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ];
        // Slot by slot, each a few round trips and a MIGRATE of its keys: on a loaded
        // machine 2,000 slots have taken over 10 s.
        let (ok, out) = redis_cli_for(&args, RESHARD_PATIENCE).await;
        assert!(ok, "redis-cli --cluster reshard failed:\n{out}");
        self.settle(&format!(
            "the cluster to settle after moving {slots} slots from :{from_port} to :{to_port}"
        ))
        .await;
    }

    fn live_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|s| s.running())
            .map(|s| s.port)
            .collect()
    }

    fn server_mut(&mut self, port: u16) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// `CLUSTER NODES` as the node on `port` answers it.
    async fn view(&self, port: u16) -> Result<Vec<Entry>, String> {
        let text: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await?;
        parse_nodes(&text)
    }

    /// The members a live node reports, failed or joining ones left out, by port.
    async fn members(&self) -> Vec<Node> {
        let live = self.live_ports();
        let entries = eventually("a live cluster node to answer CLUSTER NODES", || async {
            for &port in &live {
                if let Ok(entries) = self.view(port).await {
                    return Ok(entries);
                }
            }
            Err("no live node answered".to_owned())
        })
        .await;
        let mut nodes: Vec<Node> = entries
            .into_iter()
            .filter(|e| !e.failing && !e.joining)
            .map(|e| e.node)
            .collect();
        nodes.sort_by_key(|n| n.port);
        nodes
    }

    /// Waits (for at most [`patience`](crate::patience)) until the cluster has
    /// [`settled`](Self::settled).
    async fn settle(&self, what: &str) {
        eventually(what, || self.settled()).await;
    }

    /// Whether the cluster is at rest: every live node reports `cluster_state:ok` with
    /// all 16384 slots served, all live nodes report one topology (same members, roles,
    /// primaries and slots, no slot mid-migration) in which every live node is a
    /// connected member and no killed one serves slots, every live replica's link to its
    /// primary is up, and `redis-cli --cluster check` agrees. `Err` says what is not.
    async fn settled(&self) -> Result<(), String> {
        let live = self.live_ports();
        let mut agreed: Option<(u16, Topology)> = None;
        for &port in &live {
            let info: String = query(port, redis::cmd("CLUSTER").arg("INFO")).await?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let got = info_field(&info, field);
                if got != Some(want) {
                    return Err(format!("node :{port} reports {field}:{got:?}, not {want}"));
                }
            }
            let entries = self.view(port).await?;
            let me = entries
                .iter()
                .find(|e| e.myself)
                .ok_or_else(|| format!("node :{port} does not list itself"))?;
            if me.node.port != port {
                return Err(format!("node :{port} lists itself on :{}", me.node.port));
            }
            for e in &entries {
                let p = e.node.port;
                if e.open_slots {
                    return Err(format!("node :{port} sees slots of :{p} mid-migration"));
                }
                if live.contains(&p) {
                    if e.failing || e.joining || !(e.myself || e.connected) {
                        return Err(format!(
                            "node :{port} does not see :{p} as a healthy member"
                        ));
                    }
                } else if !e.node.slots.is_empty() {
                    return Err(format!("node :{port} sees the dead :{p} serve slots"));
                }
            }
            if !live
                .iter()
                .all(|p| entries.iter().any(|e| e.node.port == *p))
            {
                return Err(format!("node :{port} does not know every live node yet"));
            }
            if let (false, Some(primary_id)) = (me.node.primary, &me.node.primary_id) {
                let primary = entries
                    .iter()
                    .find(|e| &e.node.id == primary_id)
                    .ok_or_else(|| format!("replica :{port} replicates an unknown node"))?;
                let repl: String = query(port, redis::cmd("INFO").arg("replication")).await?;
                if info_field(&repl, "master_link_status") != Some("up")
                    || info_field(&repl, "master_port") != Some(&primary.node.port.to_string())
                {
                    return Err(format!(
                        "replica :{port} is not in sync with its primary :{}",
                        primary.node.port
                    ));
                }
            }
            let topology: Topology = entries
                .into_iter()
                .map(|e| (e.node.id.clone(), (e.node, e.failing)))
                .collect();
            match &agreed {
                None => agreed = Some((port, topology)),
                Some((first, seen)) if *seen != topology => {
                    return Err(format!(
                        "nodes :{first} and :{port} disagree on the topology"
                    ));
                }
                Some(_) => {}
            }
        }
        let entry = live.first().ok_or("no live node")?;
        let (ok, out) = redis_cli(&[
            "--cluster".to_owned(),
            "check".to_owned(),
            format!("127.0.0.1:{entry}"),
        ])
        .await;
        if !ok {
            return Err(format!("redis-cli --cluster check failed:\n{out}"));
        }
        Ok(())
    }
}

impl Drop for RedisCluster {
    /// Kills every server and waits (briefly) for them to exit, so that their
    /// directories are removed after them, not while a server still writes there.
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(c) = s.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        for s in &mut self.servers {
            if let Some(c) = s.child.as_mut() {
                while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}
