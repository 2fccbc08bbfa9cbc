//! The target's decisions, as pure functions of what is wanted and what the Engine lists: which
//! actions converge the containers on the wanted deployments ([`plan`]), what the control plane
//! is told ([`observe`]), and what an exit means for its replica ([`Track::record_exit`]). The
//! loop in `lib.rs` only gathers the inputs and carries the actions out.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use sluice_control::model::{ReplicaStatus, ServiceState};
use sluice_control::target::{GENERATION_LABEL, Observed, REPLICA_PORT, SERVICE_LABEL};

use crate::container::{REPLICA_LABEL, container_name};
use crate::engine::Container;
use crate::logs::last_lines;

/// Exits in a row without getting ready after which a generation has failed.
pub const CRASH_LOOP_EXITS: u32 = 3;
/// Lines of output a crash-loop reason quotes; a `last_exit` quotes fewer.
const REASON_LINES: usize = 10;
const LAST_EXIT_LINES: usize = 3;

/// Where a container is in its life, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created and never started: a create whose start failed, or that a control plane left
    /// half done when it stopped (it may lack the credential).
    Created,
    Running,
    Exited,
    /// The Engine could not remove or stop it cleanly.
    Dead,
    /// Paused, restarting or being removed: someone else is acting on it.
    Busy,
}

impl RunState {
    /// From the listing's `State`.
    pub fn from_engine(state: &str) -> RunState {
        match state {
            "created" => RunState::Created,
            "running" => RunState::Running,
            "exited" => RunState::Exited,
            "dead" => RunState::Dead,
            _ => RunState::Busy,
        }
    }
}

/// A replica container of ours, with the slot its labels name.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub service: String,
    pub generation: u64,
    pub index: usize,
    pub state: RunState,
    /// Its address on the replicas' network, while it runs.
    pub ip: Option<String>,
}

impl Listed {
    /// `None` for a container whose labels do not name a slot (made by something else that uses
    /// the same managed-by label): it is left alone.
    pub fn from_container(c: &Container, network: &str) -> Option<Listed> {
        Some(Listed {
            id: c.id.clone(),
            name: c.name.clone(),
            service: c.labels.get(SERVICE_LABEL)?.clone(),
            generation: c.labels.get(GENERATION_LABEL)?.parse().ok()?,
            index: c.labels.get(REPLICA_LABEL)?.parse().ok()?,
            state: RunState::from_engine(&c.state),
            ip: c.addresses.get(network).cloned(),
        })
    }

    fn address(&self) -> Option<String> {
        self.ip.as_ref().filter(|_| self.state == RunState::Running).map(|ip| format!("{ip}:{REPLICA_PORT}"))
    }
}

/// What is wanted of one service.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub replicas: usize,
    pub generation: u64,
    /// Why this generation failed; nothing of it is started or restarted until an update.
    pub failure: Option<&'a str>,
    /// Whether every replica of this generation has been ready at once.
    pub ever_healthy: bool,
}

/// What the probes and the target's memory say of one container.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub ready: bool,
    /// Its probes say it should be killed.
    pub hung: bool,
    /// It has been ready at some point since this target saw it: worth starting again when it
    /// exits, also as a replica of an older generation.
    pub served: bool,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// One step towards what is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start the container of a missing slot.
    Create { service: String, generation: u64, index: usize },
    /// Start an exited container again. `newest`: its exits count towards a crash loop.
    Revive { id: String, name: String, newest: bool },
    /// Kill a container that stopped answering; its exit is then handled like any other.
    Kill { id: String, name: String },
    /// Remove a container, first stopping it gracefully when `stop` (it runs and may be serving).
    Remove { id: String, name: String, stop: bool },
}

fn remove(c: &Listed) -> Action {
    Action::Remove { id: c.id.clone(), name: c.name.clone(), stop: c.state == RunState::Running }
}

/// The actions that take the `listed` containers towards `wanted`.
///
/// - Each slot `0..replicas` of the wanted generation gets a container (one per slot: its name
///   is the slot's), started again when it exits, unless the generation failed.
/// - Containers of other generations keep serving until every slot of the wanted one is ready
///   (a rolling update), and are then removed; one that exits meanwhile is started again if it
///   ever served (so an old generation keeps serving beside a failed update), else removed.
/// - Slots past `replicas`, second containers of a slot, and containers of services that are
///   no longer wanted are removed. A service the target has not heard of at all (after a
///   restart, before the control plane applies its services) is left alone unless
///   `collect_strays`.
pub fn plan(
    wanted: &BTreeMap<String, Want<'_>>,
    removed: &HashSet<String>,
    collect_strays: bool,
    listed: &[Listed],
    health: impl Fn(&str) -> Health,
) -> Vec<Action> {
    let mut by_service: BTreeMap<&str, Vec<&Listed>> = BTreeMap::new();
    for c in listed {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    let mut actions = Vec::new();
    for (service, containers) in &by_service {
        match wanted.get(*service) {
            Some(want) => plan_service(service, want, containers, &health, &mut actions),
            None if removed.contains(*service) || collect_strays => {
                actions.extend(containers.iter().map(|c| remove(c)))
            }
            None => {}
        }
    }
    for (service, want) in wanted {
        if !by_service.contains_key(service.as_str()) {
            plan_service(service, want, &[], &health, &mut actions);
        }
    }
    actions
}

fn plan_service(
    service: &str,
    want: &Want<'_>,
    containers: &[&Listed],
    health: &impl Fn(&str) -> Health,
    actions: &mut Vec<Action>,
) {
    let failed = want.failure.is_some();
    let mut ready = 0;
    for index in 0..want.replicas {
        let name = container_name(service, want.generation, index);
        let slot: Vec<&Listed> =
            containers.iter().copied().filter(|c| c.generation == want.generation && c.index == index).collect();
        let keep = slot.iter().find(|c| c.name == name).or(slot.first()).copied();
        actions.extend(slot.iter().filter(|c| keep.is_some_and(|k| k.id != c.id)).map(|c| remove(c)));
        let Some(c) = keep else {
            if !failed {
                actions.push(Action::Create { service: service.to_owned(), generation: want.generation, index });
            }
            continue;
        };
        let h = health(&c.id);
        match c.state {
            RunState::Running if h.hung => actions.push(Action::Kill { id: c.id.clone(), name: c.name.clone() }),
            RunState::Running => ready += usize::from(h.ready),
            RunState::Exited if !failed => {
                actions.push(Action::Revive { id: c.id.clone(), name: c.name.clone(), newest: true })
            }
            // Recreated on a later pass, with everything a new container gets.
            RunState::Created | RunState::Dead if !failed => actions.push(remove(c)),
            RunState::Exited | RunState::Created | RunState::Dead | RunState::Busy => {}
        }
    }
    let surplus = containers.iter().filter(|c| c.generation == want.generation && c.index >= want.replicas);
    actions.extend(surplus.map(|c| remove(c)));

    let all_ready = ready == want.replicas;
    for c in containers.iter().filter(|c| c.generation != want.generation) {
        if all_ready {
            actions.push(remove(c));
            continue;
        }
        let h = health(&c.id);
        match c.state {
            RunState::Running if h.hung => actions.push(Action::Kill { id: c.id.clone(), name: c.name.clone() }),
            RunState::Exited if h.served => {
                actions.push(Action::Revive { id: c.id.clone(), name: c.name.clone(), newest: false })
            }
            RunState::Exited | RunState::Created | RunState::Dead => actions.push(remove(c)),
            RunState::Running | RunState::Busy => {}
        }
    }
}

/// What the control plane is told of one service, and whether every slot of the wanted
/// generation is ready (which makes it healthy from then on).
pub fn observe(want: &Want<'_>, containers: &[&Listed], health: impl Fn(&str) -> Health) -> (Observed, bool) {
    let mut sorted: Vec<&Listed> = containers.to_vec();
    sorted.sort_by(|a, b| b.generation.cmp(&a.generation).then(a.index.cmp(&b.index)).then(a.name.cmp(&b.name)));
    let mut replicas = Vec::with_capacity(sorted.len());
    let mut ready_addresses = Vec::new();
    let mut ready_slots = BTreeSet::new();
    let mut older_ready = 0;
    let mut first_unready: Option<(String, Option<String>)> = None;
    for c in &sorted {
        let h = health(&c.id);
        let ready = h.ready && c.state == RunState::Running;
        let address = c.address();
        if ready && let Some(a) = &address {
            ready_addresses.push(a.clone());
        }
        let newest = c.generation == want.generation && c.index < want.replicas;
        match (newest, ready) {
            (true, true) => {
                ready_slots.insert(c.index);
            }
            (true, false) if first_unready.is_none() => first_unready = Some((c.name.clone(), h.last_exit.clone())),
            (false, true) if c.generation != want.generation => older_ready += 1,
            _ => {}
        }
        replicas.push(ReplicaStatus {
            index: c.index,
            name: Some(c.name.clone()),
            pid: None,
            address,
            ready,
            restarts: h.restarts,
            last_exit: h.last_exit,
        });
    }
    let n = want.replicas;
    let k = ready_slots.len();
    let all_ready = k == n;
    let rolling = sorted.iter().any(|c| c.generation != want.generation);
    let (state, reason) = if let Some(f) = want.failure {
        let serving = if older_ready > 0 {
            format!("; {older_ready} ready replicas of an earlier generation keep serving")
        } else {
            String::new()
        };
        (ServiceState::Failed, Some(format!("{f}{serving}")))
    } else if all_ready {
        (ServiceState::Healthy, None)
    } else if rolling {
        (
            ServiceState::Transitioning,
            Some(format!("rolling out generation {}: {k} of {n} replicas ready", want.generation)),
        )
    } else if want.ever_healthy {
        let why = match first_unready {
            Some((name, Some(exit))) => format!("; replica {name}: {exit}"),
            Some((name, None)) => format!("; replica {name} is not ready"),
            None => String::new(),
        };
        (ServiceState::Unhealthy, Some(format!("{k} of {n} replicas ready{why}")))
    } else {
        (ServiceState::Transitioning, Some(format!("{k} of {n} replicas ready")))
    };
    (Observed { state, reason, desired: n, replicas, ready_addresses }, all_ready)
}

/// What the target remembers of one container across its runs.
#[derive(Debug, Clone, Default)]
pub struct Track {
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Exits in a row of runs that never got ready.
    exits_unready: u32,
    /// `FinishedAt` of the exit last recorded: one exit is counted once, however many passes
    /// see the container stopped (a start that fails leaves it stopped).
    recorded: Option<String>,
    /// Whether it has ever been ready while this target watched it.
    pub served: bool,
}

/// How one run of a container ended.
#[derive(Debug, Clone)]
pub struct ExitReport<'a> {
    pub finished_at: &'a str,
    /// `exited with code 1`, `was killed (did not answer 3 health probes in a row)`, ...
    pub description: String,
    /// Its last lines of output.
    pub output: &'a str,
    /// Whether this run got ready.
    pub became_ready: bool,
    /// Whether its exits count towards failing its generation (the wanted generation's do).
    pub counts: bool,
}

/// What to do about an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Already recorded on an earlier pass.
    Seen,
    /// Start it again after this long.
    Restart(Duration),
    /// The generation failed: the reason.
    CrashLoop(String),
}

impl Track {
    /// Whether the exit that ended at `finished_at` is recorded already.
    pub fn has_recorded(&self, finished_at: &str) -> bool {
        self.recorded.as_deref() == Some(finished_at)
    }

    /// Records one exit and says what follows: a restart after a back-off, or, for the third
    /// exit in a row of runs that never got ready, the crash-loop reason (quoting the output).
    pub fn record_exit(&mut self, name: &str, exit: &ExitReport<'_>) -> Verdict {
        if self.has_recorded(exit.finished_at) {
            return Verdict::Seen;
        }
        self.recorded = Some(exit.finished_at.to_owned());
        let tail = last_lines(exit.output, LAST_EXIT_LINES);
        self.last_exit = Some(if tail.is_empty() {
            exit.description.clone()
        } else {
            format!("{}; last output: {tail}", exit.description)
        });
        if exit.became_ready {
            self.served = true;
            self.exits_unready = 0;
            // It served: back at once, a replica lost is capacity lost.
            return Verdict::Restart(Duration::ZERO);
        }
        self.exits_unready += 1;
        if exit.counts && self.exits_unready >= CRASH_LOOP_EXITS {
            let output = last_lines(exit.output, REASON_LINES);
            return Verdict::CrashLoop(format!(
                "replica {name} {} {} times before it was ready: {}",
                exit.description,
                self.exits_unready,
                if output.is_empty() { "(no output)" } else { &output }
            ));
        }
        // 1 s, 2 s, ...: a replica that cannot start is not hammered, and reaches the crash-loop
        // verdict within seconds.
        Verdict::Restart(Duration::from_secs(1 << (self.exits_unready - 1).min(4)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn c(service: &str, generation: u64, index: usize, state: RunState) -> Listed {
        let name = container_name(service, generation, index);
        Listed {
            id: format!("id-{name}"),
            ip: (state == RunState::Running).then(|| format!("10.0.{generation}.{index}")),
            name,
            service: service.into(),
            generation,
            index,
            state,
        }
    }

    fn want(replicas: usize, generation: u64) -> Want<'static> {
        Want { replicas, generation, failure: None, ever_healthy: false }
    }

    fn wanted(list: &[(&str, Want<'static>)]) -> BTreeMap<String, Want<'static>> {
        list.iter().map(|(s, w)| (s.to_string(), *w)).collect()
    }

    /// Health by container id; absent ids are neither ready nor hung.
    fn health(ready: &[&Listed]) -> impl Fn(&str) -> Health + use<> {
        let map: HashMap<String, Health> =
            ready.iter().map(|c| (c.id.clone(), Health { ready: true, served: true, ..Health::default() })).collect();
        move |id| map.get(id).cloned().unwrap_or_default()
    }

    fn removed_names(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn create(service: &str, generation: u64, index: usize) -> Action {
        Action::Create { service: service.into(), generation, index }
    }

    #[test]
    fn a_new_service_gets_every_slot() {
        let actions = plan(&wanted(&[("a", want(2, 1))]), &HashSet::new(), false, &[], health(&[]));
        assert_eq!(actions, vec![create("a", 1, 0), create("a", 1, 1)]);
    }

    #[test]
    fn running_slots_are_adopted_and_only_missing_ones_created() {
        // After a control plane restart: slot 0 runs, slot 1 is gone.
        let listed = [c("a", 4, 0, RunState::Running)];
        let actions = plan(&wanted(&[("a", want(2, 4))]), &HashSet::new(), false, &listed, health(&[]));
        assert_eq!(actions, vec![create("a", 4, 1)]);
    }

    #[test]
    fn an_exited_replica_is_revived_and_a_hung_one_killed() {
        let listed = [c("a", 1, 0, RunState::Exited), c("a", 1, 1, RunState::Running)];
        let hung = |id: &str| Health { hung: id == listed[1].id, ..Health::default() };
        let actions = plan(&wanted(&[("a", want(2, 1))]), &HashSet::new(), false, &listed, hung);
        assert_eq!(
            actions,
            vec![
                Action::Revive { id: listed[0].id.clone(), name: listed[0].name.clone(), newest: true },
                Action::Kill { id: listed[1].id.clone(), name: listed[1].name.clone() },
            ]
        );
    }

    #[test]
    fn a_failed_generation_is_neither_created_nor_restarted() {
        let listed = [c("a", 2, 0, RunState::Exited), c("a", 1, 0, RunState::Running)];
        let w = Want { failure: Some("crash loop"), ..want(2, 2) };
        let actions = plan(&wanted(&[("a", w)]), &HashSet::new(), false, &listed, health(&[&listed[1]]));
        assert_eq!(actions, vec![], "the old generation keeps serving, the failed one stays down");
    }

    #[test]
    fn old_generations_serve_until_every_new_slot_is_ready_then_go() {
        let old = [c("a", 1, 0, RunState::Running), c("a", 1, 1, RunState::Running)];
        let new = [c("a", 2, 0, RunState::Running), c("a", 2, 1, RunState::Running)];
        let listed: Vec<Listed> = old.iter().chain(&new).cloned().collect();
        let w = wanted(&[("a", want(2, 2))]);

        let one_ready = plan(&w, &HashSet::new(), false, &listed, health(&[&old[0], &old[1], &new[0]]));
        assert_eq!(one_ready, vec![], "one new replica is not ready yet: nothing goes");

        let all_ready = plan(&w, &HashSet::new(), false, &listed, health(&[&old[0], &old[1], &new[0], &new[1]]));
        assert_eq!(
            all_ready,
            vec![
                Action::Remove { id: old[0].id.clone(), name: old[0].name.clone(), stop: true },
                Action::Remove { id: old[1].id.clone(), name: old[1].name.clone(), stop: true },
            ]
        );
    }

    #[test]
    fn during_a_rollout_an_old_replica_that_served_is_revived_one_that_never_did_is_removed() {
        let listed = [c("a", 1, 0, RunState::Exited), c("a", 1, 1, RunState::Exited), c("a", 2, 0, RunState::Running)];
        let served = |id: &str| Health { served: id == listed[0].id, ..Health::default() };
        let actions = plan(&wanted(&[("a", want(1, 2))]), &HashSet::new(), false, &listed, served);
        assert_eq!(
            actions,
            vec![
                Action::Revive { id: listed[0].id.clone(), name: listed[0].name.clone(), newest: false },
                Action::Remove { id: listed[1].id.clone(), name: listed[1].name.clone(), stop: false },
            ]
        );
    }

    #[test]
    fn surplus_slots_duplicates_and_half_made_containers_are_removed() {
        let mut impostor = c("a", 1, 0, RunState::Running);
        impostor.id = "other".into();
        impostor.name = "made-by-hand".into();
        let listed = [
            c("a", 1, 0, RunState::Running),
            impostor,
            c("a", 1, 1, RunState::Created),
            c("a", 1, 2, RunState::Running),
            c("a", 1, 3, RunState::Exited),
        ];
        let actions = plan(&wanted(&[("a", want(2, 1))]), &HashSet::new(), false, &listed, health(&[&listed[0]]));
        assert_eq!(removed_names(&actions), vec!["made-by-hand", "sluice-a-g1-1", "sluice-a-g1-2", "sluice-a-g1-3"]);
        assert!(actions.contains(&Action::Remove {
            id: listed[3].id.clone(),
            name: listed[3].name.clone(),
            stop: true
        }));
        assert!(actions.contains(&Action::Remove {
            id: listed[4].id.clone(),
            name: listed[4].name.clone(),
            stop: false
        }));
    }

    #[test]
    fn removed_services_go_at_once_unknown_ones_only_when_strays_are_collected() {
        let listed = [c("gone", 1, 0, RunState::Running), c("unknown", 3, 0, RunState::Exited)];
        let removed: HashSet<String> = ["gone".to_string()].into();
        let early = plan(&BTreeMap::new(), &removed, false, &listed, health(&[]));
        assert_eq!(removed_names(&early), vec!["sluice-gone-g1-0"]);
        let later = plan(&BTreeMap::new(), &removed, true, &listed, health(&[]));
        assert_eq!(removed_names(&later), vec!["sluice-gone-g1-0", "sluice-unknown-g3-0"]);
    }

    #[test]
    fn containers_without_a_slot_in_their_labels_are_not_ours() {
        let mut labels = HashMap::new();
        labels.insert(SERVICE_LABEL.to_owned(), "a".to_owned());
        labels.insert(GENERATION_LABEL.to_owned(), "x".to_owned());
        labels.insert(REPLICA_LABEL.to_owned(), "0".to_owned());
        let other = Container {
            id: "1".into(),
            name: "n".into(),
            labels: labels.clone(),
            state: "running".into(),
            addresses: HashMap::new(),
        };
        assert_eq!(Listed::from_container(&other, "net"), None);
        labels.insert(GENERATION_LABEL.to_owned(), "5".to_owned());
        let ours = Container { labels, addresses: [("net".to_owned(), "10.1.2.3".to_owned())].into(), ..other };
        let l = Listed::from_container(&ours, "net").expect("a slot");
        assert_eq!((l.generation, l.index, l.state, l.ip.as_deref()), (5, 0, RunState::Running, Some("10.1.2.3")));
    }

    // === observe ===

    #[test]
    fn transitioning_until_every_replica_is_ready_then_healthy() {
        let listed = [c("a", 1, 0, RunState::Running), c("a", 1, 1, RunState::Running)];
        let refs: Vec<&Listed> = listed.iter().collect();
        let (o, all) = observe(&want(2, 1), &refs, health(&[&listed[0]]));
        assert!(!all);
        assert_eq!(o.state, ServiceState::Transitioning);
        assert_eq!(o.reason.as_deref(), Some("1 of 2 replicas ready"));
        assert_eq!(o.ready_addresses, vec!["10.0.1.0:8000"]);
        assert_eq!(o.desired, 2);
        assert_eq!(o.replicas.len(), 2);
        assert_eq!(o.replicas[0].name.as_deref(), Some("sluice-a-g1-0"));
        assert_eq!(o.replicas[0].address.as_deref(), Some("10.0.1.0:8000"));
        assert_eq!(o.replicas[0].pid, None);

        let (o, all) = observe(&want(2, 1), &refs, health(&[&listed[0], &listed[1]]));
        assert!(all);
        assert_eq!((o.state, o.reason), (ServiceState::Healthy, None));
        assert_eq!(o.ready_addresses, vec!["10.0.1.0:8000", "10.0.1.1:8000"]);
    }

    #[test]
    fn unhealthy_when_a_replica_of_a_healthy_generation_is_down() {
        let listed = [c("a", 1, 0, RunState::Running), c("a", 1, 1, RunState::Exited)];
        let refs: Vec<&Listed> = listed.iter().collect();
        let h = |id: &str| Health {
            ready: id == listed[0].id,
            restarts: u32::from(id == listed[1].id),
            last_exit: (id == listed[1].id).then(|| "exited with code 137".to_owned()),
            ..Health::default()
        };
        let w = Want { ever_healthy: true, ..want(2, 1) };
        let (o, _) = observe(&w, &refs, h);
        assert_eq!(o.state, ServiceState::Unhealthy);
        assert_eq!(o.reason.as_deref(), Some("1 of 2 replicas ready; replica sluice-a-g1-1: exited with code 137"));
        assert_eq!(o.replicas[1].address, None, "a stopped container has no address");
        assert_eq!(o.replicas[1].restarts, 1);
    }

    #[test]
    fn a_rollout_is_transitioning_and_both_generations_serve() {
        let listed =
            [c("a", 1, 0, RunState::Running), c("a", 2, 0, RunState::Running), c("a", 2, 1, RunState::Running)];
        let refs: Vec<&Listed> = listed.iter().collect();
        let (o, all) = observe(&want(2, 2), &refs, health(&[&listed[0], &listed[1]]));
        assert!(!all);
        assert_eq!(o.state, ServiceState::Transitioning);
        assert_eq!(o.reason.as_deref(), Some("rolling out generation 2: 1 of 2 replicas ready"));
        let names: Vec<_> = o.replicas.iter().filter_map(|r| r.name.as_deref()).collect();
        assert_eq!(names, vec!["sluice-a-g2-0", "sluice-a-g2-1", "sluice-a-g1-0"], "newest generation first");
        assert_eq!(o.ready_addresses, vec!["10.0.2.0:8000", "10.0.1.0:8000"]);
    }

    #[test]
    fn a_failure_says_so_and_that_the_old_generation_keeps_serving() {
        let listed = [c("a", 1, 0, RunState::Running), c("a", 2, 0, RunState::Exited)];
        let refs: Vec<&Listed> = listed.iter().collect();
        let w = Want { failure: Some("replica sluice-a-g2-0 exited with code 1 3 times"), ..want(1, 2) };
        let (o, _) = observe(&w, &refs, health(&[&listed[0]]));
        assert_eq!(o.state, ServiceState::Failed);
        assert_eq!(
            o.reason.as_deref(),
            Some(
                "replica sluice-a-g2-0 exited with code 1 3 times; 1 ready replicas of an earlier generation keep serving"
            )
        );
        assert_eq!(o.ready_addresses, vec!["10.0.1.0:8000"]);
    }

    #[test]
    fn no_replicas_wanted_is_healthy() {
        let (o, all) = observe(&want(0, 1), &[], health(&[]));
        assert!(all);
        assert_eq!(o.state, ServiceState::Healthy);
    }

    // === exits ===

    fn exit<'a>(at: &'a str, output: &'a str, became_ready: bool) -> ExitReport<'a> {
        ExitReport { finished_at: at, description: "exited with code 1".into(), output, became_ready, counts: true }
    }

    #[test]
    fn three_exits_in_a_row_before_ready_are_a_crash_loop_quoting_the_output() {
        let mut t = Track::default();
        let output: String = (1..=12).map(|i| format!("line {i}\n")).collect();
        assert_eq!(t.record_exit("r", &exit("t1", &output, false)), Verdict::Restart(Duration::from_secs(1)));
        assert_eq!(t.record_exit("r", &exit("t1", &output, false)), Verdict::Seen, "the same exit counts once");
        assert_eq!(t.record_exit("r", &exit("t2", &output, false)), Verdict::Restart(Duration::from_secs(2)));
        let Verdict::CrashLoop(reason) = t.record_exit("r", &exit("t3", &output, false)) else {
            panic!("a crash loop")
        };
        let lines: String = (3..=12).map(|i| format!("line {i}")).collect::<Vec<_>>().join(" | ");
        assert_eq!(reason, format!("replica r exited with code 1 3 times before it was ready: {lines}"));
        assert_eq!(t.last_exit.as_deref(), Some("exited with code 1; last output: line 10 | line 11 | line 12"));
    }

    #[test]
    fn a_run_that_got_ready_resets_the_count_and_restarts_at_once() {
        let mut t = Track::default();
        t.record_exit("r", &exit("t1", "", false));
        t.record_exit("r", &exit("t2", "", false));
        assert_eq!(t.record_exit("r", &exit("t3", "", true)), Verdict::Restart(Duration::ZERO));
        assert!(t.served);
        assert_eq!(t.last_exit.as_deref(), Some("exited with code 1"));
        assert_eq!(t.record_exit("r", &exit("t4", "", false)), Verdict::Restart(Duration::from_secs(1)));
        assert_eq!(t.record_exit("r", &exit("t5", "", false)), Verdict::Restart(Duration::from_secs(2)));
        assert!(
            matches!(t.record_exit("r", &exit("t6", "", false)), Verdict::CrashLoop(r) if r.ends_with("(no output)"))
        );
    }

    #[test]
    fn exits_of_older_generations_never_fail_the_service() {
        let mut t = Track::default();
        for at in ["t1", "t2", "t3", "t4"] {
            let e = ExitReport { counts: false, ..exit(at, "", false) };
            assert!(matches!(t.record_exit("r", &e), Verdict::Restart(_)));
        }
    }
}
