//! Tests of the command line: parsing, defaults, and the errors and exit codes bad input gets.

use super::*;
use clap::CommandFactory;

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn tolerance_accepts_percent_and_fraction() {
    assert_eq!(parse_tolerance("10%"), Ok(0.1));
    assert_eq!(parse_tolerance("0.25"), Ok(0.25));
    assert!(parse_tolerance("-5%").is_err());
    assert!(parse_tolerance("ten").is_err());
}

#[test]
fn help_documents_exit_codes() {
    let help = Cli::command().render_long_help().to_string();
    for code in [
        "0  ok",
        "1  a run breached",
        "2  usage",
        "3  setup",
        "4  internal",
        "5  `compare`",
    ] {
        assert!(help.contains(code), "{code} missing from --help");
    }
}

#[test]
fn run_args_parse() {
    let cli = Cli::try_parse_from([
        "jitwg",
        "run",
        "s.toml",
        "--set",
        "daemon.mode=push",
        "--set",
        "duration=5s",
        "--seed",
        "3",
        "--quiet",
    ])
    .unwrap();
    let Command::Run(args) = cli.command else {
        panic!("not run")
    };
    assert_eq!(args.scenario.set.len(), 2);
    assert_eq!(args.scenario.seed, Some(3));
    assert!(args.quiet && !args.event_log);
    assert_eq!(args.scenario.adjustments().unwrap().overrides.len(), 2);
}

#[test]
fn invalid_scenario_is_a_usage_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "name = \"x\"\nduration = \"5s\"\nbogus = 1\n").unwrap();
    let err = validate(ValidateArgs {
        scenario: ScenarioArgs {
            scenario: path.clone(),
            set: vec![],
            seed: None,
        },
    })
    .unwrap_err();
    assert_eq!(err.code, ExitCode::Usage);
    let msg = format!("{:#}", err.error);
    assert!(msg.contains("bad.toml") && msg.contains("bogus"), "{msg}");
}
