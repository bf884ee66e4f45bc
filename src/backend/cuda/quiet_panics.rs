//! Catching a panic without printing it. cudarc panics on a driver symbol that a very old
//! driver lacks; opening the backend turns that into an error. Swapping the process's panic
//! hook around the call would race with other threads (tests run in parallel) and could
//! silence or lose their panics, so one hook is installed once, wrapping whatever hook was
//! there, and stays quiet only on the thread that is catching.

use std::cell::Cell;
use std::panic::UnwindSafe;
use std::sync::Once;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();

/// Runs `f`; a panic inside it comes back as its message, unprinted. A hook that the program
/// installs later replaces the wrapper (the binary installs its own first).
pub fn catch<T>(f: impl FnOnce() -> T + UnwindSafe) -> Result<T, String> {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|quiet| quiet.replace(true));
    let result = std::panic::catch_unwind(f);
    QUIET.with(|quiet| quiet.set(was_quiet));
    result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_caught_panic_is_returned_and_other_threads_still_report() {
        assert_eq!(super::catch(|| 7), Ok(7));
        let caught = super::catch(|| -> u8 { panic!("driver symbol missing") });
        assert_eq!(caught, Err("driver symbol missing".to_string()));
        // Another thread's panic is not caught here and still reaches the join.
        let other = std::thread::spawn(|| panic!("elsewhere")).join();
        assert!(other.is_err());
    }
}
