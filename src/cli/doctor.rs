//! `nsbox doctor`: prints what works on this host, what does not, and what to do. Exit status 0
//! when `nsbox exec` will work, 1 when it will not.

use crate::doctor::{run_checks, Status};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as a JSON array.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DoctorArgs) -> i32 {
    let checks = run_checks();
    let works = checks.iter().all(|c| c.status != Status::Fail);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        println!("nsbox doctor");
        for c in &checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("  {tag}  {:<16} {}", c.name, c.detail);
            if let Some(hint) = &c.hint {
                if c.status != Status::Ok {
                    println!("        {:<16} hint: {hint}", "");
                }
            }
        }
        if works {
            println!("nsbox exec will work on this host.");
        } else {
            println!("nsbox exec will NOT work on this host until the FAIL lines are fixed.");
        }
    }
    if works {
        0
    } else {
        1
    }
}
