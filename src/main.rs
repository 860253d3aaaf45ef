// Tensor buffers are allocated and freed every step; see Cargo.toml for why mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(elastica::cli::main());
}
