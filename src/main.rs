fn main() {
    std::process::exit(elastica::cli::main());
}
