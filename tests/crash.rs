//! Crash faults at the write boundaries of a rotation, made deterministic by the crash points of
//! `keyward::crashpoint`: an operator armed with `KEYWARD_CRASH_AT=<point>:<n>` SIGKILLs itself the n-th time it
//! reaches `<point>`: before or after the Secret write of a new key (after it is the boundary between the Secret and
//! the status), around the removal of a previous key whose grace period ended, and around the rollout restart of a
//! consumer. Every trial must end with the operator dead by SIGKILL, which proves the boundary was reached (a point
//! never reached fails the test). After each kill, what is persisted is checked: the Secret's current key matches its
//! `key-id`, one rotation per request answered, and the previous key, while in grace, is the key that was current
//! before. At the end a normal operator converges: every ApiKey Ready, its status agreeing with its Secret, exactly
//! one rotation per request, the previous key held iff within its grace period, each rotation restarted once.
//!
//! Each test owns a namespace and runs its operators with `--namespace`, so the tests may run in parallel. Only
//! fingerprints appear in messages, never key material.
//!
//! Its own binary, so its own control plane: the crash suite is the longest (dozens of operators, each killed at a
//! write boundary) and is run alone while working on the write path (`cargo test --test crash`); its own API server
//! keeps the load of its kills and restarts off the timing of the shared integration tests.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::kube::{apikey, apply, decode, eventually, get_json, key_id, ready_reason};
use common::{control_plane_with_crds, kubectl_ok, namespace, operator};
use jiff::{SignedDuration, Timestamp};
use keyward::crashpoint::{self, Point};
use serde_json::Value;

/// How long an armed operator may take to reach its point: start-up, reconciles and, for a rollout restart, the
/// 10 s debounce after a rotation. Generous: the machine is shared.
const REACH: Duration = Duration::from_secs(60);
/// How long the final operator may take to settle every key.
const CONVERGE_SECS: u64 = 120;

/// One ApiKey of a scenario: what the test asked of it and what it has seen persisted.
struct Key {
    name: String,
    grace: SignedDuration,
    /// The Deployment restarted after its rotations, if any.
    deployment: Option<String>,
    /// Every `keyward.dev/rotate` value set, in order; each is made only once the one before it was answered.
    requests: Vec<String>,
    /// Fingerprint and `rotated-at` of the current key at each rotation count seen.
    history: BTreeMap<i64, (String, String)>,
    /// `secretTemplate.previous: OwnSecret`: the previous key lives in `<name>-previous`.
    own: bool,
}

/// The Secret of a key as persisted, after its invariants were checked.
struct Persisted {
    key_id: String,
    count: i64,
    request: Option<String>,
    rotated_at: String,
    previous: Option<String>,
    /// OwnSecret: a `<name>-previous` Secret that the bookkeeping does not name (a crash between the two writes).
    stray: bool,
}

impl Persisted {
    /// When a previous key set aside by the last rotation stops being valid.
    fn grace_ends(&self, grace: SignedDuration) -> Timestamp {
        let at = self.rotated_at.parse::<Timestamp>().expect("rotated-at was checked");
        at.checked_add(grace).expect("grace end")
    }
}

impl Key {
    /// Whether the next operator owes this key a Secret write of a new key (issue or rotation).
    fn owes_write(&self, p: Option<&Persisted>) -> bool {
        p.is_none_or(|p| p.request.as_ref() != self.requests.last())
    }

    /// Whether the next operator owes this key a grace removal (now or after the rotation it owes).
    fn owes_removal(&self, p: Option<&Persisted>) -> bool {
        self.grace.is_positive() && p.is_some_and(|p| p.previous.is_some() || self.owes_write(Some(p)))
    }

    /// Whether the next operator owes this key a rollout restart (now or after the rotation it owes).
    fn owes_restart(&self, p: Option<&Persisted>, restarted: Option<&str>) -> bool {
        self.deployment.is_some()
            && p.is_some_and(|p| self.owes_write(Some(p)) || (p.count >= 1 && restarted != Some(&p.rotated_at)))
    }

    /// Checks the invariants of this key's Secret, read before `now`; records what it saw.
    fn check(&mut self, s: &Value, own_previous: Option<&Value>, now: Timestamp, when: &str) -> Persisted {
        let name = self.name.clone();
        let ann = |a: &str| s["metadata"]["annotations"][format!("keyward.dev/{a}")].as_str().map(str::to_string);
        let ts = |a: &str| {
            let v = ann(a).unwrap_or_else(|| panic!("{when}: Secret {name} has no {a} annotation"));
            v.parse::<Timestamp>().unwrap_or_else(|e| panic!("{when}: Secret {name}: {a} {v:?}: {e}"))
        };
        assert_eq!(s["metadata"]["labels"]["app.kubernetes.io/managed-by"], "keyward", "{when}: Secret {name}");
        // Exactly one valid current key, matching its bookkeeping.
        let current = decode(s, "api-key").unwrap_or_else(|| panic!("{when}: Secret {name} holds no current key"));
        assert!(keyward::keys::verify_checksum(&current), "{when}: the current key of {name} is not a valid key");
        let id = key_id(&current);
        let torn = format!("{when}: Secret {name}: the key-id does not match the current key {id} (torn write)");
        assert_eq!(ann("key-id").as_deref(), Some(id.as_str()), "{torn}");
        assert_eq!(decode(s, "key-id").as_deref(), Some(id.as_str()), "{torn}");
        // No double rotation, no skipped request: one rotation per request answered; only the last may wait.
        let count: i64 = ann("rotation-count")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{when}: Secret {name} has no readable rotation-count"));
        let request = ann("rotate-request");
        let answered =
            match request.as_deref() {
                None => 0,
                Some(r) => {
                    self.requests.iter().position(|q| q == r).unwrap_or_else(|| {
                        panic!("{when}: Secret {name} answered the request {r:?}, which was never made")
                    }) + 1
                }
            };
        assert!(answered + 1 >= self.requests.len(), "{when}: {name}: a request before the last was never answered");
        assert_eq!(count, answered as i64, "{when}: {name}: {count} rotations for {answered} requests answered");
        let rotated_at = ann("rotated-at").unwrap_or_else(|| panic!("{when}: Secret {name} has no rotated-at"));
        if let Some((seen, _)) = self.history.get(&count) {
            assert_eq!(seen, &id, "{when}: {name}: rotation {count} now holds another key than before");
        }
        // The previous key: only the key current before the last rotation, and never lost within its grace period.
        let (previous, in_progress, stray) = if self.own {
            self.check_own(s, own_previous, (&id, count), when)
        } else {
            let previous = decode(s, "previous-api-key").map(|p| key_id(&p));
            assert_eq!(
                previous,
                ann("previous-key-id"),
                "{when}: Secret {name}: previous key and previous-key-id differ"
            );
            (previous, false, false)
        };
        let grace_ends = ts("rotated-at").checked_add(self.grace).expect("grace end");
        if count >= 1 && self.grace.is_positive() && now < grace_ends {
            let lost =
                format!("{when}: {name}: the previous key was lost: read at {now}, its grace ends at {grace_ends}");
            // NB: OwnSecret, a rotation half done (its previous Secret written, the main one not yet): the key that
            // is about to become the previous one is held, the older one that rotation drops is not.
            assert!(previous.is_some() || in_progress, "{lost}");
            assert_eq!(ts("previous-expires-at"), grace_ends, "{when}: Secret {name}: previous-expires-at");
        }
        if let Some(prev) = &previous {
            assert!(count >= 1, "{when}: {name}: a previous key {prev} without a rotation");
            let before = self.history.get(&(count - 1)).map(|(id, _)| id);
            assert_eq!(
                Some(prev),
                before,
                "{when}: {name}: the previous key is not the key current before rotation {count}"
            );
        }
        self.history.insert(count, (id.clone(), rotated_at.clone()));
        Persisted { key_id: id, count, request, rotated_at, previous, stray }
    }

    /// OwnSecret: the main Secret holds no previous key; `<name>-previous` holds the one its bookkeeping names, or
    /// (a crash between the two writes) the current key (a rotation whose main write is owed) or the key of the
    /// rotation before (a grace removal whose deletion is owed). Returns (previous held, rotation half done, stray).
    fn check_own(
        &self,
        s: &Value,
        own: Option<&Value>,
        (id, count): (&str, i64),
        when: &str,
    ) -> (Option<String>, bool, bool) {
        let name = &self.name;
        assert!(decode(s, "previous-api-key").is_none(), "{when}: {name}: the main Secret holds a previous key");
        let named = s["metadata"]["annotations"]["keyward.dev/previous-key-id"].as_str().map(str::to_string);
        let held = own.map(|p| {
            let keys: Vec<&String> = p["data"].as_object().map(|d| d.keys().collect()).unwrap_or_default();
            assert_eq!(keys, ["api-key"], "{when}: {name}-previous holds one key under the current entry name");
            key_id(&decode(p, "api-key").expect("decoded"))
        });
        if held == named {
            return (named, false, false);
        }
        let in_progress = held.as_deref() == Some(id);
        let before = self.history.get(&(count - 1)).map(|(k, _)| k.as_str());
        let leftover = named.is_none() && held.is_some() && held.as_deref() == before;
        assert!(
            in_progress || leftover,
            "{when}: {name}: {name}-previous holds {held:?}, the bookkeeping names {named:?} (current {id})"
        );
        (None, in_progress, true)
    }
}

/// One test's namespace, keys and trials.
struct Scenario {
    ns: String,
    keys: Vec<Key>,
    trials: usize,
    started: Instant,
}

impl Scenario {
    /// A namespace with `count` ApiKeys `<prefix>0..` of the given spec; `restart` gives each its own Deployment.
    fn new(test: &str, prefix: &str, count: usize, grace: &str, restart: bool) -> Scenario {
        Self::with_placement(test, prefix, count, (grace, false), restart)
    }

    /// Like [`Scenario::new`]; `own`: the previous key in its own Secret (`secretTemplate.previous: OwnSecret`).
    fn with_placement(test: &str, prefix: &str, count: usize, (grace, own): (&str, bool), restart: bool) -> Scenario {
        let ns = namespace(test);
        let secs = grace.trim_end_matches('s').parse::<i64>().expect("grace in seconds");
        let mut keys = Vec::new();
        for i in 0..count {
            let name = format!("{prefix}{i}");
            let deployment = restart.then(|| format!("consumer-{name}"));
            let mut spec = format!("  format: {{prefix: kw_crash_}}\n  rotation: {{gracePeriod: {grace}}}");
            if own {
                spec.push_str("\n  secretTemplate: {previous: OwnSecret}");
            }
            if let Some(d) = &deployment {
                kubectl_ok(&["create", "deployment", d, "-n", &ns, "--image=registry.invalid/app:1"]);
                spec.push_str(&format!("\n  rolloutRestart: [{{kind: Deployment, name: {d}}}]"));
            }
            apply(&ns, &apikey(&name, &spec));
            let grace = SignedDuration::from_secs(secs);
            keys.push(Key { name, grace, deployment, requests: Vec::new(), history: BTreeMap::new(), own });
        }
        Scenario { ns, keys, trials: 0, started: Instant::now() }
    }

    /// The `keyward.dev/restartedAt` of each key's Deployment.
    fn restarted(&self) -> Vec<Option<String>> {
        self.keys
            .iter()
            .map(|k| {
                let d = get_json(&self.ns, &format!("deployment/{}", k.deployment.as_ref()?)).expect("deployment");
                d["spec"]["template"]["metadata"]["annotations"]["keyward.dev/restartedAt"].as_str().map(str::to_string)
            })
            .collect()
    }

    /// Reads and checks every key's Secret (and Deployment).
    fn observe(&mut self, when: &str) -> (Vec<Option<Persisted>>, Vec<Option<String>>) {
        let list = get_json(&self.ns, "secrets").expect("list Secrets");
        let now = Timestamp::now();
        let restarted = self.restarted();
        let mut out = Vec::new();
        for (k, restarted) in self.keys.iter_mut().zip(&restarted) {
            let find = |n: &str| list["items"].as_array().into_iter().flatten().find(|s| s["metadata"]["name"] == n);
            let s = find(&k.name);
            let own_previous = find(&format!("{}-previous", k.name));
            assert!(k.own || own_previous.is_none(), "{when}: {}: a previous Secret without OwnSecret", k.name);
            let p = s.map(|s| k.check(s, own_previous, now, when));
            if let Some(at) = restarted {
                let known = k.history.iter().any(|(c, (_, r))| *c >= 1 && r == at);
                assert!(
                    known,
                    "{when}: {} restarted for {at}, which is not the rotation time of any key it had",
                    k.name
                );
            }
            out.push(p);
        }
        (out, restarted)
    }

    /// Sets a fresh `keyward.dev/rotate` on the key at `i`.
    fn request(&mut self, i: usize) {
        let k = &mut self.keys[i];
        let value = format!("t{}-{}", self.trials, k.name);
        kubectl_ok(&[
            "annotate",
            "--overwrite",
            &format!("apikey/{}", k.name),
            "-n",
            &self.ns,
            &format!("keyward.dev/rotate={value}"),
        ]);
        k.requests.push(value);
    }

    /// Runs an operator armed with `<point>:<n>` and asserts that it died by SIGKILL at that point within
    /// [`REACH`]; then checks what is persisted.
    async fn crash_at(&mut self, point: Point, n: usize) {
        self.trials += 1;
        let tag = format!("{}-{}", self.ns, self.trials);
        let arm = format!("{point}:{n}");
        let args = ["--namespace", self.ns.as_str()];
        let mut op = operator::start_with_env(&tag, "info", &args, &[(crashpoint::VAR, &arm)]);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = op.child.try_wait().expect("wait for the operator") {
                break status;
            }
            if started.elapsed() > REACH {
                op.kill();
                panic!("{tag}: {}={arm} was never reached in {REACH:?} (log {})", crashpoint::VAR, op.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = op.log.display();
        assert_eq!(status.signal(), Some(9), "{tag}: {arm}: the operator ended with {status}, not SIGKILL (log {log})");
        let text = op.log_text();
        assert!(
            text.contains("crash point reached") && text.contains(&format!("point={point}")),
            "{tag}: died by SIGKILL, but its log does not say it reached {point} (log {log})"
        );
        println!("{tag}: {arm}: SIGKILLed after {:.1}s", started.elapsed().as_secs_f64());
        // NB: a write the dead process had already sent may still land; let it, so the next trial counts what is owed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.observe(&format!("after {tag} ({arm})"));
    }

    /// A normal operator issues the first keys; then it is SIGKILLed too (no crash point).
    async fn issue_first_keys(&mut self) {
        let mut op = operator::start_with_args(&format!("{}-issue", self.ns), "info", &["--namespace", &self.ns]);
        let ns = self.ns.clone();
        let names: Vec<String> = self.keys.iter().map(|k| k.name.clone()).collect();
        eventually(60, "the first keys", || {
            names
                .iter()
                .all(|n| get_json(&ns, &format!("secret/{n}")).is_some_and(|s| decode(&s, "api-key").is_some()))
                .then_some(())
        })
        .await;
        op.kill();
        self.observe("after the first keys");
    }

    /// Whether a normal operator has finished everything owed: every request answered in Secret and status, every
    /// ended grace removed, every rotation restarted.
    fn settled(&mut self) -> bool {
        let (persisted, restarted) = self.observe("while converging");
        let now = Timestamp::now();
        self.keys.iter().zip(persisted).zip(restarted).all(|((k, p), restarted)| {
            let Some(p) = p else { return false };
            let Some(ak) = get_json(&self.ns, &format!("apikey/{}", k.name)) else { return false };
            let st = &ak["status"];
            let grace_over = |p: &Persisted| p.grace_ends(k.grace) <= now;
            let grace_ends_soon = |p: &Persisted| p.grace_ends(k.grace) <= now + SignedDuration::from_secs(10);
            !k.owes_write(Some(&p))
                && ready_reason(&ak).is_some_and(|(s, _)| s == "True")
                && st["keyId"] == p.key_id.as_str()
                && st["lastRotateRequest"].as_str() == k.requests.last().map(String::as_str)
                && !(p.previous.is_some() && p.count >= 1 && grace_over(&p))
                // NB: a grace that ends within moments is not settled yet: the assertions below run later, and
                // would otherwise race the operator's removal of the previous key.
                && !(p.previous.is_some() && p.count >= 1 && grace_ends_soon(&p))
                && st["previousKeyId"].as_str() == p.previous.as_deref()
                && !p.stray
                && !k.owes_restart(Some(&p), restarted.as_deref())
        })
    }

    /// A normal operator converges; then every invariant is asserted.
    async fn converge(&mut self) {
        let tag = format!("{}-final", self.ns);
        let mut op = operator::start_with_args(&tag, "info", &["--namespace", &self.ns]);
        let deadline = Instant::now() + Duration::from_secs(CONVERGE_SECS);
        while !self.settled() {
            assert!(Instant::now() < deadline, "{tag}: not converged in {CONVERGE_SECS}s (log {})", op.log.display());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (persisted, restarted) = self.observe("after convergence");
        let now = Timestamp::now();
        for ((k, p), restarted) in self.keys.iter().zip(persisted).zip(restarted) {
            let name = &k.name;
            let p = p.expect("converged keys have Secrets");
            let ak = get_json(&self.ns, &format!("apikey/{name}")).expect("apikey");
            let st = &ak["status"];
            assert_eq!(ready_reason(&ak), Some(("True".into(), "KeyIssued".into())), "{name} is Ready");
            assert_eq!(st["keyId"], p.key_id.as_str(), "{name}: status and Secret agree on the current key");
            let requests = k.requests.len() as i64;
            assert_eq!(st["rotationCount"], requests, "{name}: status: exactly one rotation per request ({requests})");
            assert_eq!(p.count, requests, "{name}: Secret: exactly one rotation per request ({requests})");
            let grace_ends = p.grace_ends(k.grace);
            let in_grace = p.count >= 1 && now < grace_ends;
            assert_eq!(
                p.previous.is_some(),
                in_grace,
                "{name}: the previous key is held iff in grace (ends {grace_ends})"
            );
            assert_eq!(st["previousKeyId"].as_str(), p.previous.as_deref(), "{name}: status and Secret agree on it");
            assert!(!p.stray, "{name}: no previous Secret the bookkeeping does not name");
            if let Some(d) = &k.deployment {
                let dep = get_json(&self.ns, &format!("deployment/{d}")).expect("deployment");
                let want = (p.count >= 1).then_some(p.rotated_at.as_str());
                assert_eq!(restarted.as_deref(), want, "{name}: {d} restarted for the current key");
                // Each restart is a new pod-template value, one generation: one restart per rotation, none skipped.
                assert_eq!(dep["metadata"]["generation"], 1 + p.count, "{name}: {d}: one restart per rotation");
            }
        }
        op.kill();
        println!("{}: {} trials, converged, {:.0}s in all", self.ns, self.trials, self.started.elapsed().as_secs_f64());
    }
}

/// Before and after the Secret write of a new key (12 + 12 trials): the first trials crash around the first
/// issue, the others around rotations asked for with `keyward.dev/rotate`. The 2 s grace period makes a request
/// that comes inside it wait for its end, so the kills land on deferred rotations as well.
#[tokio::test]
async fn sigkill_around_the_secret_write() {
    control_plane_with_crds().await;
    let mut s = Scenario::new("crash_secret_write", "w", 5, "2s", false);
    for trial in 0..24 {
        let (persisted, _) = s.observe("before a trial");
        // Ask again of about two keys in three that owe nothing, so n picks different keys each time.
        let mut owed = (0..s.keys.len()).filter(|&i| s.keys[i].owes_write(persisted[i].as_ref())).count();
        for (i, p) in persisted.iter().enumerate() {
            let idle = p.is_some() && !s.keys[i].owes_write(p.as_ref());
            if idle && ((trial + i) % 3 != 0 || owed == 0) {
                s.request(i);
                owed += 1;
            }
        }
        let point = if trial % 2 == 0 { Point::BeforeSecretWrite } else { Point::AfterSecretWrite };
        s.crash_at(point, 1 + (trial * 7 / 2) % owed).await;
    }
    s.converge().await;
}

/// Before and after the removal of a previous key whose 2 s grace period ended (8 + 8 trials). 2 s rather than 1:
/// a removal that came early is then seen within the grace period.
#[tokio::test]
async fn sigkill_around_the_grace_removal() {
    control_plane_with_crds().await;
    let mut s = Scenario::new("crash_grace_removal", "g", 4, "2s", false);
    s.issue_first_keys().await;
    for trial in 0..16 {
        let (persisted, _) = s.observe("before a trial");
        let owes = |s: &Scenario, i: usize| s.keys[i].owes_removal(persisted[i].as_ref());
        let mut owed = (0..s.keys.len()).filter(|&i| owes(&s, i)).count();
        // A rotation within a grace period would push out a previous key still in grace: ask only of idle keys.
        for (i, p) in persisted.iter().enumerate() {
            if p.is_some() && !owes(&s, i) && ((trial + i) % 2 == 0 || owed == 0) {
                s.request(i);
                owed += 1;
            }
        }
        let point = if trial % 2 == 0 { Point::BeforeGraceRemoval } else { Point::AfterGraceRemoval };
        s.crash_at(point, 1 + (trial * 3 / 2) % owed).await;
    }
    s.converge().await;
}

/// OwnSecret: before and after the write of the previous key's own Secret, which precedes the main Secret's write
/// of a rotation (8 + 8 trials; every rotation with a grace period writes one, and with a 2 s grace a request inside
/// it waits for its end, as in `sigkill_around_the_secret_write`).
#[tokio::test]
async fn sigkill_around_the_previous_secret_write() {
    control_plane_with_crds().await;
    let mut s = Scenario::with_placement("crash_previous_write", "o", 4, ("2s", true), false);
    s.issue_first_keys().await;
    for trial in 0..16 {
        let (persisted, _) = s.observe("before a trial");
        let mut owed = (0..s.keys.len()).filter(|&i| s.keys[i].owes_write(persisted[i].as_ref())).count();
        for (i, p) in persisted.iter().enumerate() {
            let idle = p.is_some() && !s.keys[i].owes_write(p.as_ref());
            if idle && ((trial + i) % 3 != 0 || owed == 0) {
                s.request(i);
                owed += 1;
            }
        }
        let point = if trial % 2 == 0 { Point::BeforePreviousSecretWrite } else { Point::AfterPreviousSecretWrite };
        s.crash_at(point, 1 + (trial * 7 / 2) % owed).await;
    }
    s.converge().await;
}

/// OwnSecret: before and after the deletion of the previous key's own Secret when its 2 s grace period ended, which
/// follows the main Secret's write (6 + 6 trials).
#[tokio::test]
async fn sigkill_around_the_previous_secret_removal() {
    control_plane_with_crds().await;
    let mut s = Scenario::with_placement("crash_previous_removal", "q", 4, ("2s", true), false);
    s.issue_first_keys().await;
    for trial in 0..12 {
        let (persisted, _) = s.observe("before a trial");
        let owes = |s: &Scenario, i: usize| {
            s.keys[i].owes_removal(persisted[i].as_ref()) || persisted[i].as_ref().is_some_and(|p| p.stray)
        };
        let mut owed = (0..s.keys.len()).filter(|&i| owes(&s, i)).count();
        for (i, p) in persisted.iter().enumerate() {
            if p.is_some() && !owes(&s, i) && ((trial + i) % 2 == 0 || owed == 0) {
                s.request(i);
                owed += 1;
            }
        }
        let point = if trial % 2 == 0 { Point::BeforePreviousSecretRemoval } else { Point::AfterPreviousSecretRemoval };
        s.crash_at(point, 1 + (trial * 3 / 2) % owed).await;
    }
    s.converge().await;
}

/// Before and after the rollout restart of a key's consumer (6 + 6 trials). A restart waits for 10 s without a
/// rotation, so rotations are asked for only when no restart is owed, and most trials crash at a restart already due.
#[tokio::test]
async fn sigkill_around_the_rollout_restart() {
    control_plane_with_crds().await;
    let mut s = Scenario::new("crash_rollout_restart", "c", 3, "2s", true);
    s.issue_first_keys().await;
    for trial in 0..12 {
        let (persisted, restarted) = s.observe("before a trial");
        let owes = |s: &Scenario, i: usize| s.keys[i].owes_restart(persisted[i].as_ref(), restarted[i].as_deref());
        let mut owed = (0..s.keys.len()).filter(|&i| owes(&s, i)).count();
        if owed == 0 {
            for i in 0..s.keys.len() {
                s.request(i);
                owed += 1;
            }
        }
        let point = if trial % 2 == 0 { Point::BeforeRolloutRestart } else { Point::AfterRolloutRestart };
        s.crash_at(point, 1 + trial % owed).await;
    }
    s.converge().await;
}

/// Before and after the Secret write that revokes a key (4 + 4 trials), one suspended key per trial: after each kill
/// the Secret holds either the key it had (the revocation is still owed) or no key material at all, never another
/// key; after a normal operator converges every suspended key is `Suspended` with no material left.
#[tokio::test]
async fn sigkill_around_the_revocation() {
    control_plane_with_crds().await;
    let ns = namespace("crash_revocation");
    let names: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for n in &names {
        apply(&ns, &apikey(n, "  rotation: {interval: 1h, gracePeriod: 30m}"));
    }
    let mut op = operator::start_with_args(&format!("{ns}-issue"), "info", &["--namespace", &ns]);
    let issued = eventually(60, "the keys", || {
        names.iter().map(|n| get_json(&ns, &format!("secret/{n}")).and_then(|s| decode(&s, "api-key"))).collect()
    })
    .await;
    let issued: Vec<String> = issued;
    op.kill();
    for (trial, name) in names.iter().enumerate() {
        let point = if trial % 2 == 0 { Point::BeforeRevocation } else { Point::AfterRevocation };
        kubectl_ok(&["patch", "apikey", name, "-n", &ns, "--type", "merge", "-p", r#"{"spec":{"suspended":true}}"#]);
        let tag = format!("{ns}-{trial}");
        let arm = format!("{point}:1");
        let mut op = operator::start_with_env(&tag, "info", &["--namespace", &ns], &[(crashpoint::VAR, &arm)]);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = op.child.try_wait().expect("wait") {
                break status;
            }
            assert!(started.elapsed() < REACH, "{tag}: {arm} never reached (log {})", op.log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.signal(), Some(9), "{tag}: {arm}: ended with {status}, not SIGKILL");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every key so far: its own key, or nothing (the first revocation owed may be an earlier key's).
        let mut stripped = 0;
        for (i, n) in names.iter().enumerate().take(trial + 1) {
            let s = get_json(&ns, &format!("secret/{n}")).expect("secret");
            let held = decode(&s, "api-key");
            assert!(held.is_none() || held.as_deref() == Some(issued[i].as_str()), "{tag}: {n} holds another key");
            assert!(decode(&s, "previous-api-key").is_none(), "{tag}: {n} holds a previous key");
            stripped += usize::from(held.is_none());
        }
        if point == Point::AfterRevocation {
            assert!(stripped >= 1, "{tag}: crashed after a revocation write, yet every suspended key holds its key");
        }
    }
    let op = operator::start_with_args(&format!("{ns}-final"), "info", &["--namespace", &ns]);
    for n in &names {
        eventually(CONVERGE_SECS, "revoked and Suspended", || {
            let ak = get_json(&ns, &format!("apikey/{n}"))?;
            let s = get_json(&ns, &format!("secret/{n}"))?;
            let revoked = decode(&s, "api-key").is_none() && decode(&s, "previous-api-key").is_none();
            (revoked && ready_reason(&ak) == Some(("False".into(), "Suspended".into()))).then_some(())
        })
        .await;
    }
    drop(op);
}
