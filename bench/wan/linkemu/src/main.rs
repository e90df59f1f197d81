//! linkemu: an emulated WAN link between two TUN devices, for bench/wan.
//!
//!   linkemu --dev-a NAME --dev-b NAME --delay-ms D [--jitter-ms J] [--loss P] [--rate-mbit R]
//!           [--queue-ms Q] [--seed S] [--max-seconds T]
//!
//! Creates both TUN devices (no packet information header) and prints `ready` once they exist;
//! the caller moves them into network namespaces and gives them addresses. Every packet read
//! from one is written to the other as the link profile decides (`shaper.rs`), in each
//! direction by a thread of its own. It stops on SIGTERM or SIGINT, or after `--max-seconds`
//! (default 1800), and then prints what happened to the packets as one JSON line.

mod shaper;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shaper::{Fate, LinkProfile, Shaper};

/// Largest packet a TUN device hands over (the MTU is set by the caller, far below this).
const MAX_PACKET: usize = 65_536;
/// The longest a direction's thread sleeps before it looks at the stop flag again.
const POLL_SLICE: Duration = Duration::from_millis(100);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Default)]
struct Counts {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    fn json(&self) -> String {
        format!(
            "{{\"packets\":{},\"bytes\":{},\"lost\":{},\"dropped\":{}}}",
            self.packets.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        )
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("linkemu: {message}\nusage: linkemu --dev-a NAME --dev-b NAME --delay-ms D [--jitter-ms J] [--loss P] [--rate-mbit R] [--queue-ms Q] [--seed S] [--max-seconds T]");
            std::process::exit(2);
        }
    };
    let (a, b) = match (open_tun(&options.dev_a), open_tun(&options.dev_b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("linkemu: cannot create the TUN devices: {e}");
            std::process::exit(1);
        }
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    println!("ready");
    let deadline = Instant::now() + options.max_run;
    let a_to_b = Arc::new(Counts::default());
    let b_to_a = Arc::new(Counts::default());
    let threads = [
        (a, b, options.profile, options.seed, a_to_b.clone()),
        (
            b,
            a,
            options.profile,
            options.seed.wrapping_add(1),
            b_to_a.clone(),
        ),
    ]
    .map(|(from, to, profile, seed, counts)| {
        std::thread::spawn(move || relay(from, to, profile, seed, &counts, deadline))
    });
    for thread in threads {
        if let Err(e) = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("panicked")))
        {
            eprintln!("linkemu: {e}");
        }
    }
    println!("{{\"aToB\":{},\"bToA\":{}}}", a_to_b.json(), b_to_a.json());
}

/// Moves packets from `from` to `to` as `profile` decides until stopped.
fn relay(
    from: RawFd,
    to: RawFd,
    profile: LinkProfile,
    seed: u64,
    counts: &Counts,
    deadline: Instant,
) -> io::Result<()> {
    let mut shaper = Shaper::new(profile, seed, Instant::now());
    let mut in_flight: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    // Buffers of delivered packets, reused for the next ones.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET];
    while !STOP.load(Ordering::Relaxed) && Instant::now() < deadline {
        let now = Instant::now();
        while in_flight.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, packet)) = in_flight.pop_front() else {
                break;
            };
            // A full receive queue on the far side drops the packet, as a NIC would.
            // SAFETY: writes `packet.len()` bytes from a live buffer.
            unsafe { libc::write(to, packet.as_ptr().cast(), packet.len()) };
            spare.push(packet);
        }
        let wait = in_flight.front().map_or(POLL_SLICE, |(due, _)| {
            due.saturating_duration_since(now).min(POLL_SLICE)
        });
        wait_readable(from, wait)?;
        loop {
            // SAFETY: reads into a live buffer of MAX_PACKET bytes.
            let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    break;
                }
                return Err(e);
            }
            let len = n as usize;
            counts.packets.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(len as u64, Ordering::Relaxed);
            match shaper.admit(Instant::now(), len) {
                Fate::Lost => {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                }
                Fate::Dropped => {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Fate::DeliverAt(due) => {
                    let mut packet = spare.pop().unwrap_or_default();
                    packet.clear();
                    packet.extend_from_slice(&buf[..len]);
                    in_flight.push_back((due, packet));
                }
            }
        }
    }
    Ok(())
}

/// Waits until `fd` is readable or `wait` has passed (nanosecond resolution: ppoll).
fn wait_readable(fd: RawFd, wait: Duration) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec.
    let r = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Creates TUN device `name` (IFF_TUN | IFF_NO_PI), non-blocking.
fn open_tun(name: &str) -> io::Result<RawFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("bad device name {name:?}")));
    }
    // SAFETY: a constant path and flags.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // struct ifreq: the name, then the flags as a short.
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
    ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq of 40 bytes.
    if unsafe { libc::ioctl(fd, TUNSETIFF, ifreq.as_mut_ptr()) } < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

struct Options {
    dev_a: String,
    dev_b: String,
    profile: LinkProfile,
    seed: u64,
    max_run: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Options {
            dev_a: String::new(),
            dev_b: String::new(),
            profile: LinkProfile {
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                loss: 0.0,
                rate_bps: 0,
                queue: Duration::from_millis(50),
            },
            seed: 1,
            max_run: Duration::from_secs(1800),
        };
        let mut delay_given = false;
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let value = rest.next().ok_or(format!("{flag} needs a value"))?;
            let number = |max: f64| -> Result<f64, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && (0.0..=max).contains(n))
                    .ok_or(format!("{flag}: {value:?} is not a number from 0 to {max}"))
            };
            match flag.as_str() {
                "--dev-a" => options.dev_a = value.clone(),
                "--dev-b" => options.dev_b = value.clone(),
                "--delay-ms" => {
                    options.profile.delay = Duration::from_secs_f64(number(10_000.0)? / 1e3);
                    delay_given = true;
                }
                "--jitter-ms" => {
                    options.profile.jitter = Duration::from_secs_f64(number(10_000.0)? / 1e3)
                }
                "--loss" => options.profile.loss = number(1.0)?,
                "--rate-mbit" => options.profile.rate_bps = (number(100_000.0)? * 1e6) as u64,
                "--queue-ms" => {
                    options.profile.queue = Duration::from_secs_f64(number(10_000.0)? / 1e3)
                }
                "--seed" => options.seed = number(u32::MAX as f64)? as u64,
                "--max-seconds" => options.max_run = Duration::from_secs_f64(number(86_400.0)?),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if options.dev_a.is_empty() || options.dev_b.is_empty() || !delay_given {
            return Err("--dev-a, --dev-b and --delay-ms are required".into());
        }
        Ok(options)
    }
}
