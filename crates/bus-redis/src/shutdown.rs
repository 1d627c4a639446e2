//! The one way background tasks wait for shutdown, so that every task treats
//! the signal, and the loss of its sender, alike.

use tokio::sync::watch;

/// Completes once `shutdown` holds `true`, or once its sender is dropped:
/// then nobody is left who could ever flip it, and a task waiting for it
/// would outlive its owner.
pub(crate) async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    // Either outcome means stop; the borrowed value is not needed.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
