//! Real programs of the machine run under `LD_PRELOAD=libdfly_slaballoc_c.so` and must
//! produce the same output as without it: `python3` (an allocation-heavy script, with
//! threads and `os.fork`, that also asks the library through ctypes whether it is the
//! allocator in use), `sort` of a large file, and `git` on a scratch repository.
//!
//! A program that is not installed is reported and skipped, unless `CI` is set: CI
//! installs them (see `.ci/run`), so there a missing program fails the test.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

/// The library: `$DFLY_SLABALLOC_CDYLIB` if set, else built once by this test with the
/// cargo that runs it, into its own target directory (cargo does not build a
/// cdylib-only package's library for its integration tests, and a separate directory
/// keeps the nested build off the lock of the running one).
fn library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(p) = std::env::var_os("DFLY_SLABALLOC_CDYLIB") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/preload-<hash> -> target/
        let target = exe.ancestors().nth(3).expect("target dir").join("cabi-preload");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--release", "-p", "dfly-slaballoc-cabi", "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        let o = run(cmd, Duration::from_secs(900));
        assert!(o.status.success(), "building the library: {}", String::from_utf8_lossy(&o.stderr));
        let lib = target.join("release").join("libdfly_slaballoc_c.so");
        assert!(lib.exists(), "{} missing after the build", lib.display());
        lib
    })
    .clone()
}

fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed (CI must install it)"
        );
        eprintln!("SKIP: {program} is not installed");
    }
    found
}

/// Runs `cmd` with a time limit, killing it when exceeded. Output is read while the
/// program runs (a full pipe would otherwise stop it).
fn run(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: signalling our own child, which has not been reaped (its waiter
            // thread is still blocked in wait).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} ran longer than {limit:?}");
        }
    }
}

/// Runs the same command without and with the library preloaded; both must succeed
/// with the same stdout. Returns the preloaded run's stdout.
fn same_output(build: impl Fn() -> Command, what: &str) -> String {
    let plain = run(build(), Duration::from_secs(120));
    assert!(plain.status.success(), "{what} failed without the library: {plain:?}");
    let mut cmd = build();
    cmd.env("LD_PRELOAD", library());
    let pre = run(cmd, Duration::from_secs(120));
    assert!(
        pre.status.success(),
        "{what} failed under LD_PRELOAD: status {:?}, stderr: {}",
        pre.status,
        String::from_utf8_lossy(&pre.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&pre.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "{what}: output differs under LD_PRELOAD"
    );
    String::from_utf8_lossy(&pre.stdout).into_owned()
}

const PY: &str = r#"
import ctypes, hashlib, json, os, random, threading
lib = ctypes.CDLL(None)
try:
    f = lib.dfly_slab_zone_bytes
    f.restype = ctypes.c_size_t
    preloaded = f() > 0
except AttributeError:
    preloaded = False
print("PRELOADED" if preloaded else "PLAIN", file=__import__("sys").stderr)
rng = random.Random(7)
d = {}
for i in range(200000):
    d["k%d" % rng.randrange(10**9)] = [i] * (i % 7) + ["x" * (i % 300)]
keys = sorted(d)
h = hashlib.sha256()
for k in keys[::97]:
    h.update(json.dumps([k, d[k]]).encode())
print(len(d), h.hexdigest())
def work(seed, out):
    r = random.Random(seed)
    acc = []
    for i in range(50000):
        acc.append(bytes(r.randrange(1, 2000)))
        if len(acc) > 500:
            acc = acc[250:]
    out[seed] = sum(len(a) for a in acc)
out = {}
ts = [threading.Thread(target=work, args=(s, out)) for s in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print(sorted(out.items()))
# fork while other threads allocate
ts = [threading.Thread(target=work, args=(s, {})) for s in range(10, 12)]
for t in ts: t.start()
for n in range(5):
    pid = os.fork()
    if pid == 0:
        x = [str(i) * 10 for i in range(20000)]
        os._exit(0 if len("".join(x)) > 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
for t in ts: t.join()
print("forks ok")
"#;

#[test]
fn python_runs_the_same_under_the_library_and_uses_it() {
    if !have("python3") {
        return;
    }
    let out = same_output(
        || {
            let mut c = Command::new("python3");
            c.args(["-c", PY]);
            c
        },
        "python3",
    );
    assert!(out.contains("forks ok"), "{out}");
    // The script says on stderr whether it saw the library's symbol.
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PY]).env("LD_PRELOAD", library());
    let o = run(cmd, Duration::from_secs(120));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PRELOADED"),
        "python3 did not allocate from the library: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sort_of_a_large_file_is_the_same() {
    if !have("sort") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dfly-preload-sort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lines");
    let mut text = String::new();
    let mut x = 88172645463325252u64;
    for i in 0..300_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.push_str(&format!("{:x} {} {}\n", x, i, "y".repeat((x % 40) as usize)));
    }
    std::fs::write(&file, text).unwrap();
    let out = same_output(
        || {
            let mut c = Command::new("sort");
            c.arg(&file).env("LC_ALL", "C");
            c
        },
        "sort",
    );
    assert_eq!(out.lines().count(), 300_000);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn git_on_a_scratch_repository_works() {
    if !have("git") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dfly-preload-git-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lib = library();
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(&dir)
            .env("LD_PRELOAD", &lib)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("HOME", &dir);
        let o = run(c, Duration::from_secs(60));
        assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    for i in 0..200 {
        let sub = dir.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}")), format!("file {i}\n").repeat(i + 1)).unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    git(&["mv", "d1", "moved"]);
    git(&["commit", "-q", "-m", "second"]);
    let log = git(&["log", "--format=%s"]);
    assert_eq!(log, "second\nfirst\n");
    let files = git(&["ls-files"]);
    assert_eq!(files.lines().count(), 200);
    assert!(files.contains("moved/f1\n"));
    git(&["fsck", "--strict"]);
    git(&["gc", "-q"]);
    // The commit ids are fixed by content and dates: the same as without the library.
    let head = git(&["rev-parse", "HEAD"]);
    let mut c = Command::new("git");
    c.args(["rev-parse", "HEAD"]).current_dir(&dir);
    let plain = run(c, Duration::from_secs(60));
    assert_eq!(String::from_utf8_lossy(&plain.stdout), head);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The library tests of other workspace crates, built by this test and run with the
/// library preloaded: every allocation of those test binaries (Rust's `System`
/// allocator calls `malloc`) goes through dfly-slaballoc.
#[test]
fn other_crates_test_suites_pass_on_the_library() {
    let lib = library();
    let target = lib.parent().and_then(std::path::Path::parent).expect("target dir").to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--release", "--no-run", "--lib", "--message-format=json"])
        .args(["-p", "dfly-core", "-p", "dfly-ipi", "-p", "dfly-namecache", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let o = run(cmd, Duration::from_secs(1200));
    assert!(o.status.success(), "building the suites: {}", String::from_utf8_lossy(&o.stderr));
    let json = String::from_utf8_lossy(&o.stdout);
    let mut exes = Vec::new();
    for line in json.lines().filter(|l| l.contains("\"compiler-artifact\"")) {
        if let Some(i) = line.find("\"executable\":\"") {
            let rest = &line[i + 14..];
            if let Some(j) = rest.find('"') {
                exes.push(PathBuf::from(&rest[..j]));
            }
        }
    }
    assert_eq!(exes.len(), 3, "expected three library test binaries, got {exes:?}");
    for exe in exes {
        let mut c = Command::new(&exe);
        c.env("LD_PRELOAD", &lib).current_dir(env!("CARGO_MANIFEST_DIR"));
        let out = run(c, Duration::from_secs(600));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("test result: ok"),
            "{} failed under LD_PRELOAD: {stdout}\n{}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout.lines().rfind(|l| l.starts_with("test result")).unwrap_or("");
        eprintln!("{} on libdfly_slaballoc_c.so: {summary}", exe.display());
    }
}
