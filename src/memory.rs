//! Giving freed heap memory back to the system once streams have ended. glibc's malloc keeps
//! what a departed player's session freed (its arenas shrink only from the top), so a server
//! that once had 80 players stayed at their peak RSS; `malloc_trim` returns the free pages.
//! It runs once churn settles — half a second with no stream ending after some have — so a busy
//! relay never pays for it per session. The ended streams' status events, kept for a few
//! minutes (`registry`), are pruned on the same beat and trimmed after in the same way.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// How often the number of ended streams is looked at.
const SETTLE: Duration = Duration::from_millis(500);

/// Follows the registry until `stop`, trimming the heap after each wave of stream ends.
pub async fn give_back_after_churn(registry: Arc<Registry>, stop: CancellationToken) {
    let ended = || -> u64 { registry.lifecycle_counts().ended.values().sum() };
    let mut last = ended();
    let mut pending = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SETTLE) => {}
        }
        // Expired events of ended streams go on this beat too, and are trimmed like an end.
        let pruned = registry.prune_ended() > 0;
        let now = ended();
        if now != last || pruned {
            last = now;
            pending = true;
        } else if pending {
            pending = false;
            // Off the runtime's threads: it walks the heap.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Returns the allocator's free memory to the system where the allocator allows it.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the process's own heap; it takes
    // the allocator's locks itself and touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}
