use super::*;

fn args(v: &[&str]) -> Result<Args, ArgsError> {
    parse_args(v.iter().copied())
}

#[test]
fn no_args_is_vsock_with_announce_to_host() {
    let a = args(&[]).unwrap();
    assert_eq!(a.listen_addr(), ListenAddr::Vsock { port: 1024 });
    assert_eq!(a.listen_addr().to_ttrpc(), "vsock://-1:1024");
    assert_eq!(
        a.announce_target(),
        Some(AnnounceTarget::Vsock { cid: 2, port: 1025 })
    );
}

#[test]
fn unix_listen_has_no_default_announce() {
    let a = args(&["--listen", "unix:///tmp/a.sock"]).unwrap();
    assert_eq!(a.listen_addr(), ListenAddr::Unix("/tmp/a.sock".into()));
    assert_eq!(a.listen_addr().to_ttrpc(), "unix:///tmp/a.sock");
    assert_eq!(a.announce_target(), None);
}

#[test]
fn explicit_announce_and_inline_values() {
    let a = args(&[
        "--listen=unix:///x.sock",
        "--announce",
        "unix:///y.sock",
        "--log=debug",
    ])
    .unwrap();
    assert_eq!(
        a.announce_target(),
        Some(AnnounceTarget::Unix("/y.sock".into()))
    );
    assert_eq!(a.log, Some(LevelFilter::DEBUG));
    let a = args(&["--announce", "vsock://2:2000"]).unwrap();
    assert_eq!(
        a.announce_target(),
        Some(AnnounceTarget::Vsock { cid: 2, port: 2000 })
    );
}

#[test]
fn no_announce_wins() {
    let a = args(&["--no-announce", "--announce", "unix:///y.sock"]).unwrap();
    assert_eq!(a.announce_target(), None);
    let a = args(&["--no-announce"]).unwrap();
    assert_eq!(a.announce_target(), None);
}

#[test]
fn vsock_listen_forms() {
    for s in ["vsock://-1:7", "vsock://:7", "vsock://any:7"] {
        assert_eq!(
            args(&["--listen", s]).unwrap().listen_addr(),
            ListenAddr::Vsock { port: 7 }
        );
    }
}

#[test]
fn bad_args_are_errors() {
    assert_eq!(
        args(&["--bogus"]),
        Err(ArgsError::Unknown("--bogus".into()))
    );
    assert_eq!(
        args(&["--listen"]),
        Err(ArgsError::MissingValue("--listen"))
    );
    assert!(matches!(
        args(&["--listen", "tcp://1.2.3.4:5"]),
        Err(ArgsError::BadAddr(_))
    ));
    assert!(matches!(
        args(&["--listen", "unix://"]),
        Err(ArgsError::BadAddr(_))
    ));
    assert!(matches!(
        args(&["--listen", "vsock://3:1024"]),
        Err(ArgsError::BadAddr(_))
    ));
    assert!(matches!(
        args(&["--listen", "vsock://-1:x"]),
        Err(ArgsError::BadAddr(_))
    ));
    assert!(matches!(
        args(&["--announce", "vsock://2"]),
        Err(ArgsError::BadAddr(_))
    ));
    assert!(matches!(
        args(&["--log", "loud"]),
        Err(ArgsError::BadLevel(_))
    ));
}

#[test]
fn version_flag() {
    assert!(args(&["--version"]).unwrap().version);
    assert!(args(&["-V"]).unwrap().version);
}

#[test]
fn cmdline_hull_options() {
    let o = parse_cmdline("console=ttyS0 reboot=t panic=-1 hull.log=debug hull.debug_console=1\n");
    assert_eq!(o.log, Some(LevelFilter::DEBUG));
    assert!(o.debug_console);
    assert!(o.ignored.is_empty());
}

#[test]
fn cmdline_defaults_and_unknowns() {
    let o = parse_cmdline("console=ttyS0 quiet");
    assert_eq!(o, KernelOptions::default());
    let o = parse_cmdline("hull.log=loud hull.nope=1 hull.debug_console=maybe hull.debug_console");
    assert_eq!(o.log, None);
    assert!(o.debug_console, "a bare flag turns it on");
    assert_eq!(
        o.ignored,
        vec!["hull.log=loud", "hull.nope=1", "hull.debug_console=maybe"]
    );
}

#[test]
fn cmdline_levels_are_case_insensitive() {
    assert_eq!(
        parse_cmdline("hull.log=TRACE").log,
        Some(LevelFilter::TRACE)
    );
    assert_eq!(parse_cmdline("hull.log=off").log, Some(LevelFilter::OFF));
}

#[test]
fn cmdline_quotes_group_words() {
    assert_eq!(
        split_cmdline(r#"a "b c" d="e f"  g"#),
        vec!["a", "b c", "d=e f", "g"]
    );
    let o = parse_cmdline(r#"init=/init foo="x hull.log=trace" hull.log=warn"#);
    assert_eq!(o.log, Some(LevelFilter::WARN));
}

#[test]
fn empty_cmdline() {
    assert_eq!(parse_cmdline(""), KernelOptions::default());
    assert!(split_cmdline("   \n").is_empty());
}
