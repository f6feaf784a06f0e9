//! What the operator's verbs print. A reader that goes away early (`hemvist backups ORG | head`)
//! ends the verb quietly with success, as Unix tools do, instead of a panic on the closed pipe.

use std::io::Write;

/// Writes to stdout; on a closed pipe the process exits 0, on any other failure 1.
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the verbs: see [`write`].
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use outln;
