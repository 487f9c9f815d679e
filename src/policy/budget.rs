//! The budget of one plugin call: an instruction count and a wall-clock deadline that hold on
//! every Lua thread of the state, coroutines included.
//!
//! mlua's own hook fires for one Lua thread only (it removes itself from any other), so a
//! plugin could run `coroutine.wrap(function() while true do end end)()` unchecked. This hook
//! is a plain C function installed on the main thread; Lua copies it into every coroutine the
//! plugin creates, and it reads the budget of the call running on this OS thread. Once a call
//! is over budget every `pcall`, `xpcall`, `coroutine.resume` and `coroutine.close` of the
//! plugin re-raises (see the sandbox's prelude), so the error cannot be swallowed.

use std::cell::Cell;
use std::ffi::{CStr, c_int};
use std::time::{Duration, Instant};

use mlua::{Lua, ffi};

/// How often (in VM instructions, per Lua thread) the budget is checked.
pub const STEP: u32 = 1000;

/// Why a call was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    Instructions,
    Deadline,
}

impl Trip {
    fn message(self) -> &'static CStr {
        match self {
            Trip::Instructions => c"sluice: instruction budget exceeded",
            Trip::Deadline => c"sluice: call deadline exceeded",
        }
    }
}

#[derive(Clone, Copy)]
struct Budget {
    used: u64,
    limit: u64,
    deadline: Option<Instant>,
    tripped: Option<Trip>,
}

thread_local! {
    static CURRENT: Cell<Budget> = const {
        Cell::new(Budget { used: 0, limit: u64::MAX, deadline: None, tripped: None })
    };
}

/// Starts the budget of a call on this thread: `instructions` VM instructions in all its Lua
/// threads together, and at most `time` of wall clock.
pub fn begin(instructions: u64, time: Duration) {
    CURRENT.set(Budget {
        used: 0,
        limit: instructions,
        deadline: Some(Instant::now() + time),
        tripped: None,
    });
}

/// What cut off the call that ran last on this thread, if anything did.
pub fn tripped() -> Option<Trip> {
    CURRENT.get().tripped
}

/// Installs the hook on `lua`'s main thread; coroutines created later inherit it.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: `lua_sethook` only stores the function pointer and mask in the state.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_sethook(state, Some(hook), ffi::LUA_MASKCOUNT, STEP as c_int);
        })
    }
}

/// Charges `STEP` instructions to the current call; `Some` once it is over budget.
fn spend() -> Option<Trip> {
    let mut budget = CURRENT.get();
    budget.used = budget.used.saturating_add(STEP as u64);
    let trip = budget.tripped.or_else(|| {
        if budget.used > budget.limit {
            Some(Trip::Instructions)
        } else if budget.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Trip::Deadline)
        } else {
            None
        }
    });
    budget.tripped = trip;
    CURRENT.set(budget);
    trip
}

unsafe extern "C-unwind" fn hook(state: *mut ffi::lua_State, _debug: *mut ffi::lua_Debug) {
    // Nothing with a destructor is alive past this point: `lua_error` unwinds by longjmp.
    if let Some(trip) = spend() {
        // SAFETY: called by Lua with a valid state; raising an error from a count hook is
        // allowed and unwinds to the innermost protected call.
        unsafe {
            ffi::lua_pushstring(state, trip.message().as_ptr());
            ffi::lua_error(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_trips_on_count_or_time_and_stays_tripped() {
        begin(2 * STEP as u64, Duration::from_secs(60));
        assert_eq!(spend(), None);
        assert_eq!(spend(), None);
        assert_eq!(spend(), Some(Trip::Instructions));
        assert_eq!(spend(), Some(Trip::Instructions), "stays tripped");
        assert_eq!(tripped(), Some(Trip::Instructions));
        begin(u64::MAX, Duration::ZERO);
        assert_eq!(spend(), Some(Trip::Deadline));
        begin(u64::MAX, Duration::from_secs(60));
        assert_eq!(tripped(), None, "a new call starts afresh");
    }
}
