fn main() {
    std::process::exit(nsbox::cli::main());
}
