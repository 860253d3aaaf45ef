// Tensor buffers are allocated and freed every step; see Cargo.toml for why mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    restore_sigpipe();
    std::process::exit(elastica::cli::main());
}

/// Rust starts programs with SIGPIPE ignored, so a write to a closed pipe (`elastica status
/// DIR | head -1`) is an error, on which `println!` panics. With the default disposition the
/// process ends quietly at that write, as other Unix tools do; every result file is written
/// atomically, so nothing is left half-written.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread starts; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
