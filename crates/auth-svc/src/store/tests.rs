//! The same scenarios on both stores: the in-memory twins must answer as the
//! Redis scripts do. The Redis side runs on a private `redis-server`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use herald_common::keys::Keys;

use super::*;
use crate::refresh::{RefreshStore, RefreshToken, Rotation};
use crate::signing::KeyStore;
use crate::throttle::{Limits, Throttle};
use crate::users::{User, UserStore};

/// A private `redis-server` on a unix socket, killed on drop.
struct TestRedis {
    _child: Child,
    dir: PathBuf,
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestRedis {
    async fn start() -> (Self, AuthStore) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("auth-svc-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "cannot start redis-server: install it, e.g. `apt-get install -y redis-server`",
            );
        let redis = Self { _child: child, dir };
        let url = format!("redis+unix://{}", socket.display());
        for _ in 0..200 {
            if let Ok((_, conn)) =
                herald_common::store::connect(&herald_common::store::Target::Single(url.clone()))
                    .await
            {
                return (redis, AuthStore::Redis(conn));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer at {url}");
    }
}

/// Runs `scenario` on a memory store and on a Redis store.
macro_rules! on_both {
    ($scenario:ident) => {
        $scenario(&AuthStore::memory()).await;
        let (_redis, store) = TestRedis::start().await;
        $scenario(&store).await;
    };
}

fn keys() -> Keys {
    Keys::new("herald:")
}

fn user(name: &str) -> User {
    User {
        username: name.to_owned(),
        password_hash: "$argon2id$hash".to_owned(),
        channels: vec!["news".to_owned(), "chat:*".to_owned()],
        publish: vec![],
        created_at: "2026-01-01T00:00:00.000Z".to_owned(),
    }
}

async fn users(store: &AuthStore) {
    let users = UserStore::new(keys());
    assert!(users.create(store, &user("bob")).await.unwrap());
    assert!(users.create(store, &user("alice")).await.unwrap());
    let mut taken = user("alice");
    taken.password_hash = "$argon2id$other".to_owned();
    assert!(!users.create(store, &taken).await.unwrap(), "{store:?}");
    assert_eq!(
        users.get(store, "alice").await.unwrap(),
        Some(user("alice"))
    );
    assert_eq!(users.get(store, "carol").await.unwrap(), None);
    assert_eq!(users.list(store).await.unwrap(), ["alice", "bob"]);
    assert!(users.delete(store, "alice").await.unwrap());
    assert!(!users.delete(store, "alice").await.unwrap());
    assert_eq!(users.get(store, "alice").await.unwrap(), None);
    assert_eq!(users.list(store).await.unwrap(), ["bob"]);
}

async fn refresh(store: &AuthStore) {
    let refresh = RefreshStore::new(keys(), 60);
    let rotated = || Rotation::Rotated {
        user: "alice".to_owned(),
    };
    let t1 = refresh.issue(store, "alice").await.unwrap();
    let t2 = t1.next();
    assert_eq!(refresh.rotate(store, &t1, &t2).await.unwrap(), rotated());
    let t3 = t2.next();
    assert_eq!(refresh.rotate(store, &t2, &t3).await.unwrap(), rotated());
    let other = refresh.issue(store, "bob").await.unwrap();
    let stranger = RefreshToken::new_family();
    assert_eq!(
        refresh
            .rotate(store, &stranger, &stranger.next())
            .await
            .unwrap(),
        Rotation::Unknown
    );
    // Presenting t1 again revokes its family, the newest token included.
    assert_eq!(
        refresh.rotate(store, &t1, &t1.next()).await.unwrap(),
        Rotation::Reused {
            user: "alice".to_owned()
        }
    );
    assert_eq!(
        refresh.rotate(store, &t3, &t3.next()).await.unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        refresh.rotate(store, &t1, &t1.next()).await.unwrap(),
        Rotation::Unknown
    );
    // Another family is untouched.
    assert_eq!(
        refresh.rotate(store, &other, &other.next()).await.unwrap(),
        Rotation::Rotated {
            user: "bob".to_owned()
        }
    );
}

async fn throttle(store: &AuthStore) {
    let window = Duration::from_secs(60);
    let throttle = Throttle::new(
        keys(),
        Limits {
            per_user: 3,
            per_ip: 5,
            window,
        },
    );
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let elsewhere: IpAddr = "10.0.0.2".parse().unwrap();
    assert_eq!(throttle.check(store, "alice", ip).await.unwrap(), None);
    for _ in 0..2 {
        throttle.failed(store, "alice", ip).await.unwrap();
    }
    assert_eq!(throttle.check(store, "alice", ip).await.unwrap(), None);
    throttle.failed(store, "alice", ip).await.unwrap();
    // Blocked for the rest of the window, from any IP.
    let wait = throttle.check(store, "alice", elsewhere).await.unwrap();
    assert!(
        wait.is_some_and(|w| w <= window && w > window - Duration::from_secs(5)),
        "{wait:?}"
    );
    assert_eq!(throttle.check(store, "bob", elsewhere).await.unwrap(), None);
    // A success clears the user's count, not the IP's.
    throttle.succeeded(store, "alice").await.unwrap();
    assert_eq!(throttle.check(store, "alice", ip).await.unwrap(), None);
    // Names that cannot exist count too, against the IP.
    for name in ["bad name", "bad name"] {
        throttle.failed(store, name, ip).await.unwrap();
    }
    assert!(throttle.check(store, "bob", ip).await.unwrap().is_some());
    assert_eq!(throttle.check(store, "bob", elsewhere).await.unwrap(), None);
}

async fn key_ring(store: &AuthStore) {
    // No retention and no leeway: a rotated-out key may leave at once, unless a
    // token it signed is still alive.
    let ring = KeyStore::new(&keys(), 0, 0);
    let k1 = ring.ensure(store, None).await.unwrap();
    assert_eq!(ring.ensure(store, None).await.unwrap(), k1, "{store:?}");
    let loaded = ring.load(store, None).await.unwrap();
    assert_eq!(loaded.current.kid, k1);
    assert_eq!(loaded.keys.len(), 1);
    let k2 = ring.rotate(store).await.unwrap();
    assert_ne!(k1, k2);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let loaded = ring.load(store, Some(&loaded)).await.unwrap();
    assert_eq!(loaded.current.kid, k2);
    assert_eq!(loaded.keys.len(), 1, "k1 is retired");
    // k2 signs a token that lives another hour: it stays published.
    let exp = herald_proto::time::now_ms() / 1000 + 3600;
    ring.record_expiry(store, &k2, exp).await.unwrap();
    // A key that left the ring is only logged.
    ring.record_expiry(store, "gone", exp).await.unwrap();
    let k3 = ring.rotate(store).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let k4 = ring.rotate(store).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let loaded = ring.load(store, Some(&loaded)).await.unwrap();
    assert_eq!(loaded.current.kid, k4);
    let mut kids: Vec<_> = loaded.keys.keys().cloned().collect();
    kids.sort();
    let mut want = vec![k2.clone(), k4.clone()];
    want.sort();
    assert_eq!(kids, want, "k3: {k3}");
    // The configured key becomes current; installing it again changes nothing.
    let configured = crate::signing::Ed25519Key::generate().unwrap();
    assert_eq!(
        ring.ensure(store, Some(&configured)).await.unwrap(),
        configured.kid
    );
    assert_eq!(
        ring.ensure(store, Some(&configured)).await.unwrap(),
        configured.kid
    );
    let loaded = ring.load(store, Some(&loaded)).await.unwrap();
    assert_eq!(loaded.current.kid, configured.kid);
    assert!(loaded.keys.contains_key(&k2));
}

#[tokio::test]
async fn users_agree() {
    on_both!(users);
}

#[tokio::test]
async fn refresh_families_agree() {
    on_both!(refresh);
}

#[tokio::test]
async fn throttles_agree() {
    on_both!(throttle);
}

#[tokio::test]
async fn key_rings_agree() {
    on_both!(key_ring);
}

#[tokio::test]
async fn revocation_reaches_the_gateways() {
    let engine = Engine::memory();
    let keys = keys();
    let mut sub = engine.subscriber().await.unwrap();
    sub.sink.subscribe(&[keys.control()]).await.unwrap();
    revoke(&engine, &keys, "j1", 0, "{\"type\":\"revoke\"}".to_owned())
        .await
        .unwrap();
    assert!(engine.is_revoked(&keys, "j1").await.unwrap());
    let msg = sub.stream.next().await.unwrap();
    assert_eq!(msg.channel(), keys.control());
    assert_eq!(msg.payload(), b"{\"type\":\"revoke\"}");
}
