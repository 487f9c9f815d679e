//! Holds across the cluster. Every hold lives in Redis with its expiry (`sluice:hold:{id}`
//! with a TTL, scored by expiry in `sluice:holds`) and in the hold table of every node, so
//! a republish is refused on whichever node it reaches — from the table, without asking
//! Redis, so admission stays local and holds stay in force while Redis is away. A hold
//! made by a cluster terminate is in Redis before its request goes out, and each node puts
//! it in its table before stopping a stream; each heartbeat then reconciles the table with
//! Redis (`plan`, pure): holds this node made alone (a keep-alive verdict's) go up, holds
//! it has not seen (made while it was away, or before it started) come down, and a hold
//! gone from one side — released, or lifted by an admission — goes from the other.

use std::collections::HashSet;

use crate::registry::{Hold, Registry};

use super::{Cluster, ClusterError};

/// The sorted set of holds, scored by when they expire (ms since the epoch).
pub const HOLDS: &str = "sluice:holds";

/// The key of a hold (its JSON, with a TTL of its remaining time).
pub fn hold_key(id: u64) -> String {
    format!("sluice:hold:{id}")
}

/// What one reconciliation does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// This node's holds the cluster has not seen: written to Redis.
    pub push: Vec<Hold>,
    /// The cluster's holds this node has not seen: put in its table.
    pub adopt: Vec<Hold>,
    /// Holds gone from Redis (released elsewhere, or expired there): lifted here.
    pub lift_here: Vec<u64>,
    /// Holds lifted here (by an admission) still in Redis: deleted there.
    pub delete_remote: Vec<u64>,
}

/// Reconciles this node's table (`local`) with Redis (`remote`), given the holds both
/// sides are known to have had (`known`: an id is known only once it is in Redis). `local`
/// and `known` are read before `remote`, so a hold adopted meanwhile is left alone.
pub fn plan(known: &HashSet<u64>, local: &[Hold], remote: &[Hold]) -> Plan {
    let local_ids: HashSet<u64> = local.iter().map(|h| h.hold_id).collect();
    let remote_ids: HashSet<u64> = remote.iter().map(|h| h.hold_id).collect();
    Plan {
        push: local
            .iter()
            .filter(|h| !known.contains(&h.hold_id) && !remote_ids.contains(&h.hold_id))
            .cloned()
            .collect(),
        adopt: remote
            .iter()
            .filter(|h| !known.contains(&h.hold_id) && !local_ids.contains(&h.hold_id))
            .cloned()
            .collect(),
        lift_here: local
            .iter()
            .map(|h| h.hold_id)
            .filter(|id| known.contains(id) && !remote_ids.contains(id))
            .collect(),
        delete_remote: remote
            .iter()
            .map(|h| h.hold_id)
            .filter(|id| known.contains(id) && !local_ids.contains(id))
            .collect(),
    }
}

impl Cluster {
    /// Writes holds to Redis, each with its remaining time as its TTL.
    pub async fn store_holds(&self, holds: &[Hold]) -> Result<(), ClusterError> {
        let now = crate::registry::now_ms();
        let mut pipe = redis::pipe();
        let mut any = false;
        for hold in holds.iter().filter(|h| h.until > now) {
            any = true;
            pipe.cmd("SET")
                .arg(hold_key(hold.hold_id))
                .arg(serde_json::to_string(hold).unwrap_or_default())
                .arg("PX")
                .arg(hold.until - now)
                .ignore()
                .cmd("ZADD")
                .arg(HOLDS)
                .arg(hold.until)
                .arg(hold.hold_id)
                .ignore();
        }
        if !any {
            return Ok(());
        }
        self.run_pipe(&pipe).await?;
        self.mark_known(holds.iter().map(|h| h.hold_id));
        Ok(())
    }

    /// Deletes holds from Redis.
    pub async fn delete_holds(&self, ids: &[u64]) -> Result<(), ClusterError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("DEL").arg(hold_key(*id)).ignore();
            pipe.cmd("ZREM").arg(HOLDS).arg(*id).ignore();
        }
        self.run_pipe(&pipe).await
    }

    /// The holds in force in Redis.
    pub async fn load_holds(&self) -> Result<Vec<Hold>, ClusterError> {
        let now = crate::registry::now_ms();
        let _: () = self
            .run(
                redis::cmd("ZREMRANGEBYSCORE")
                    .arg(HOLDS)
                    .arg("-inf")
                    .arg(now),
            )
            .await?;
        let ids: Vec<u64> = self
            .run(redis::cmd("ZRANGEBYSCORE").arg(HOLDS).arg(now).arg("+inf"))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for id in &ids {
            get.arg(hold_key(*id));
        }
        let entries: Vec<Option<String>> = self.run(&get).await?;
        Ok(entries
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }

    /// Holds that are in Redis, as far as this node knows.
    pub fn mark_known(&self, ids: impl IntoIterator<Item = u64>) {
        self.lock_known().extend(ids);
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.known_holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One reconciliation of this node's hold table with Redis (see the module's doc).
    pub async fn sync_holds(&self, registry: &Registry) -> Result<(), ClusterError> {
        let local = registry.holds();
        let known = self.lock_known().clone();
        let remote = self.load_holds().await?;
        let plan = plan(&known, &local, &remote);
        let remote_ids: HashSet<u64> = remote.iter().map(|h| h.hold_id).collect();
        self.mark_known(
            local
                .iter()
                .map(|h| h.hold_id)
                .filter(|id| remote_ids.contains(id)),
        );
        if !plan.push.is_empty() {
            self.store_holds(&plan.push).await?;
        }
        for hold in plan.adopt {
            let id = hold.hold_id;
            if registry.adopt_hold(hold).is_ok() {
                self.mark_known([id]);
            }
        }
        if !plan.lift_here.is_empty() {
            let gone: HashSet<u64> = plan.lift_here.iter().copied().collect();
            registry.release(|h| gone.contains(&h.hold_id));
        }
        self.delete_holds(&plan.delete_remote).await?;
        // Forget what neither side has any more.
        let now_local: HashSet<u64> = registry.holds().iter().map(|h| h.hold_id).collect();
        let forgotten: HashSet<u64> = plan
            .lift_here
            .iter()
            .chain(&plan.delete_remote)
            .copied()
            .collect();
        self.lock_known().retain(|id| {
            !forgotten.contains(id) && (now_local.contains(id) || remote_ids.contains(id))
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{HoldFilter, TerminationSource};

    fn hold(id: u64) -> Hold {
        Hold {
            hold_id: id,
            reason: "r".into(),
            created: 1,
            until: u64::MAX,
            filter: HoldFilter::default(),
            until_admitted: false,
            source: TerminationSource::Server,
            termination_id: None,
        }
    }

    fn ids(holds: &[Hold]) -> Vec<u64> {
        holds.iter().map(|h| h.hold_id).collect()
    }

    #[test]
    fn each_side_learns_what_the_other_has_and_loses_what_the_other_lost() {
        let known: HashSet<u64> = [1, 2, 3, 4].into();
        // Local: 1 (both), 2 (gone from Redis), 5 (made here alone).
        // Remote: 1, 3 (lifted here), 6 (made elsewhere).
        let local = [hold(1), hold(2), hold(5)];
        let remote = [hold(1), hold(3), hold(6)];
        let plan = plan(&known, &local, &remote);
        assert_eq!(ids(&plan.push), [5]);
        assert_eq!(ids(&plan.adopt), [6]);
        assert_eq!(plan.lift_here, [2]);
        assert_eq!(plan.delete_remote, [3]);
    }

    #[test]
    fn in_step_nothing_moves() {
        let known: HashSet<u64> = [1, 2].into();
        let both = [hold(1), hold(2)];
        assert_eq!(plan(&known, &both, &both), Plan::default());
        // Not yet known on either side but present on both (pushed as it was read).
        assert_eq!(plan(&HashSet::new(), &both, &both), Plan::default());
    }

    #[test]
    fn serialised_holds_read_back_as_themselves() {
        let mut h = hold(7);
        h.until_admitted = true;
        h.source = TerminationSource::Rest {
            remote_address: "127.0.0.1:1".into(),
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Hold>(&json).unwrap(), h);
    }
}
