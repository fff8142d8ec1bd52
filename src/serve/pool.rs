//! The warm pool: per entry (image, profile, network policy, size) the server keeps that many
//! sandboxes created and idle, refilled in the background one create at a time per entry. A
//! create request whose image, profile and network policy match takes one (a hit); what the
//! request personalises (env, secrets, labels, setup script, time to live) is applied at claim
//! time by the server. A claimed sandbox belongs to its key from then on and is never returned
//! to the pool.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sandboxes::{CreateRequest, NetworkRequest, PoolKey};

/// After a failed refill, the entry waits this long before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Entry {
    key: PoolKey,
    /// How the entry is named in metrics: the image, or "host".
    label: String,
    target: usize,
    ready: VecDeque<String>,
    creating: bool,
    retry_at: Option<Instant>,
}

/// The pool's entries.
#[derive(Debug, Default)]
pub struct Pool {
    entries: Mutex<Vec<Entry>>,
    /// Woken when a claim made room (the refill task waits on it).
    pub wake: tokio::sync::Notify,
}

/// One entry of `--pool`: `IMAGE=N`, `host=N` for the host's root, optionally
/// `IMAGE=N,net=filtered,allow=HOST,...` and `profile=NAME`.
pub fn parse_entry(spec: &str) -> Result<(PoolKey, String, usize), String> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or_default();
    let (image, size) = head
        .rsplit_once('=')
        .ok_or_else(|| format!("{spec:?}: expected IMAGE=N (host=N for the host's root)"))?;
    let size: usize = size
        .parse()
        .map_err(|_| format!("{spec:?}: {size:?} is not a number of sandboxes"))?;
    let mut key = PoolKey {
        image: (image != "host").then(|| image.to_string()),
        profile: None,
        network: None,
    };
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: {part:?} is not KEY=VALUE"))?;
        match k {
            "profile" => key.profile = Some(v.to_string()),
            "net" => {
                key.network
                    .get_or_insert_with(|| (String::new(), Vec::new(), Vec::new()))
                    .0 = v.to_string()
            }
            "allow" | "deny" => {
                let net = key
                    .network
                    .get_or_insert_with(|| ("filtered".into(), Vec::new(), Vec::new()));
                if k == "allow" { &mut net.1 } else { &mut net.2 }.push(v.to_string());
            }
            _ => {
                return Err(format!(
                    "{spec:?}: unknown setting {k:?} (profile, net, allow, deny)"
                ))
            }
        }
    }
    if let Some(net) = &mut key.network {
        if net.0.is_empty() {
            net.0 = "filtered".into();
        }
    }
    // Metrics name the entry by its image and options (without the size).
    let label = match spec.split_once(',') {
        Some((_, options)) => format!("{image},{options}"),
        None => image.to_string(),
    };
    Ok((key, label, size))
}

/// The create request a pool entry's sandboxes are made from.
pub fn request_for(key: &PoolKey) -> CreateRequest {
    CreateRequest {
        image: key.image.clone(),
        profile: key.profile.clone(),
        network: key
            .network
            .as_ref()
            .map(|(mode, allow, deny)| NetworkRequest {
                mode: mode.clone(),
                allow: allow.clone(),
                deny: deny.clone(),
                log: false,
            }),
        ..Default::default()
    }
}

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// No entry matches: an ordinary cold create.
    NoEntry,
    /// An entry matches but has nothing ready (counted as a miss).
    Miss,
    Hit(String),
}

impl Pool {
    pub fn new(entries: Vec<(PoolKey, String, usize)>) -> Pool {
        Pool {
            entries: Mutex::new(
                entries
                    .into_iter()
                    .map(|(key, label, target)| Entry {
                        key,
                        label,
                        target,
                        ready: VecDeque::new(),
                        creating: false,
                        retry_at: None,
                    })
                    .collect(),
            ),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(&self, key: &PoolKey) -> Claim {
        let mut entries = self.lock();
        let Some(entry) = entries.iter_mut().find(|e| &e.key == key) else {
            return Claim::NoEntry;
        };
        let claim = entry.ready.pop_front().map_or(Claim::Miss, Claim::Hit);
        drop(entries);
        self.wake.notify_one();
        claim
    }

    /// Entries that need a sandbox and have no create under way: marks them creating.
    pub fn wanted(&self) -> Vec<(usize, PoolKey)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, e) in self.lock().iter_mut().enumerate() {
            if !e.creating && e.ready.len() < e.target && e.retry_at.is_none_or(|t| t <= now) {
                e.creating = true;
                out.push((i, e.key.clone()));
            }
        }
        out
    }

    /// A refill ended: with a sandbox, or failed (the entry waits before retrying).
    pub fn filled(&self, index: usize, id: Option<String>) {
        if let Some(e) = self.lock().get_mut(index) {
            e.creating = false;
            match id {
                Some(id) => {
                    e.ready.push_back(id);
                    e.retry_at = None;
                }
                None => e.retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE),
            }
        }
    }

    /// Empties the pool (shutdown): the ids to remove.
    pub fn drain(&self) -> Vec<String> {
        let mut entries = self.lock();
        for e in entries.iter_mut() {
            e.target = 0;
        }
        entries.iter_mut().flat_map(|e| e.ready.drain(..)).collect()
    }

    /// (label, ready, target) per entry.
    pub fn sizes(&self) -> Vec<(String, usize, usize)> {
        self.lock()
            .iter()
            .map(|e| (e.label.clone(), e.ready.len(), e.target))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        let (key, label, n) = parse_entry("host=3").unwrap();
        assert_eq!((key.image, label.as_str(), n), (None, "host", 3));
        let (key, label, _) =
            parse_entry("devbox:1=2,allow=api.example.com,profile=strict").unwrap();
        assert_eq!(label, "devbox:1,allow=api.example.com,profile=strict");
        assert_eq!(key.image.as_deref(), Some("devbox:1"));
        assert_eq!(key.profile.as_deref(), Some("strict"));
        assert_eq!(
            key.network,
            Some(("filtered".into(), vec!["api.example.com".into()], vec![]))
        );
        assert!(parse_entry("host").is_err());
        assert!(parse_entry("host=x").is_err());
        assert!(parse_entry("host=1,color=red").is_err());
    }

    #[test]
    fn claims_hit_until_drained_and_wake_the_refill() {
        let (key, label, _) = parse_entry("host=2").unwrap();
        let pool = Pool::new(vec![(key.clone(), label, 2)]);
        assert_eq!(pool.claim(&key), Claim::Miss);
        let other = PoolKey {
            image: Some("x".into()),
            profile: None,
            network: None,
        };
        assert_eq!(pool.claim(&other), Claim::NoEntry);
        let wanted = pool.wanted();
        assert_eq!(wanted.len(), 1);
        assert!(pool.wanted().is_empty(), "one create at a time per entry");
        pool.filled(0, Some("a".into()));
        assert_eq!(pool.claim(&key), Claim::Hit("a".into()));
        assert_eq!(pool.claim(&key), Claim::Miss);
        // The request a pool sandbox is made from matches the key it fills.
        assert_eq!(request_for(&key).pool_key(), Some(key));
    }
}
