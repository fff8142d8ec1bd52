// Small allocations from a bump arena, the rest from the libc (nsbox::sys::arena says why).
#[global_allocator]
static ALLOCATOR: nsbox::sys::arena::Arena = nsbox::sys::arena::Arena;

fn main() {
    // Called as `nsbox-runc` (a link to this binary) or as `nsbox runtime ...`: runc's command
    // line, for container engines (see nsbox::runtime).
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let as_runc = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|name| name == "nsbox-runc");
    if as_runc {
        std::process::exit(nsbox::runtime::main(args));
    }
    if args.get(1).is_some_and(|a| a == "runtime") {
        args.remove(1);
        // So that usage and errors name the command as typed.
        args[0] = "nsbox runtime".into();
        std::process::exit(nsbox::runtime::main(args));
    }
    std::process::exit(nsbox::cli::main());
}
