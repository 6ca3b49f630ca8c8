//! The store's threads, watched: a thread that panics records why as the store's failure, which
//! its callers, the health check and the server see (see [`watched`]).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

/// A store thread's body, watched: a panic is recorded as the store's failure and logged, so
/// that health checks report it and the server exits for its supervisor to restart it, instead
/// of the store answering "shutting down" to every write for as long as the process lives.
pub(in crate::store) fn watched(
    failure: Arc<OnceLock<String>>,
    name: &'static str,
    body: impl FnOnce(),
) -> impl FnOnce() {
    move || {
        install_panic_hook();
        WATCHED.with(|watched| *watched.borrow_mut() = Some((failure, name)));
        // The hook has recorded the failure; the thread ends without unwinding further.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    }
}

/// The failure slot of a store, and the role of one of its threads.
type Watch = (Arc<OnceLock<String>>, &'static str);

thread_local! {
    /// What this thread reports to, if it is a store thread.
    static WATCHED: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Records a store thread's panic before it unwinds: unwinding drops the requests the thread
/// held, and their callers must find the failure already recorded when their reply is gone.
/// Other threads' panics go to the hook that was there before.
fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            WATCHED.with(|watched| {
                if let Some((failure, name)) = &*watched.borrow() {
                    let cause = crate::store::panic_message(info.payload());
                    let at = info.location().map(ToString::to_string).unwrap_or_default();
                    tracing::error!(thread = name, %cause, %at, "a store thread died; the store takes no more writes");
                    let _ = failure.set(format!("the store's {name} thread died: {cause}"));
                }
            });
            previous(info);
        }));
    });
}
