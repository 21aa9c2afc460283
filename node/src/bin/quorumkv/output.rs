//! Standard output for the client commands: `quorumkv scan ... | head -1` closes the pipe
//! early, and `println!` panics on that (exit 101). A closed stdout means the reader has what
//! it wanted: the process stops quietly with exit 0. Any other write error is reported and
//! exits 1.

use std::io::Write;

/// Writes one line to stdout (see the module doc for what happens when that fails).
pub fn line(args: std::fmt::Arguments<'_>) {
    write(format_args!("{args}\n"));
}

/// Writes `args` as they are (no newline added).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for the binary: a closed pipe ends the process quietly instead of panicking.
macro_rules! out {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use out;
