//! The interface and route ioctls the agent needs (SIOCSIF*, SIOCADDRT). Hand-written rather
//! than pulling a netlink stack into a binary that must stay small and start in milliseconds;
//! `rtentry` and `in6_rtmsg` are declared here because libc does not expose them (glibc) or
//! exposes them with private fields.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Kernel `struct rtentry` (include/uapi/linux/route.h).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Kernel `struct in6_rtmsg` (include/uapi/linux/ipv6_route.h).
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

const RTF_UP: u16 = 0x1;
const RTF_GATEWAY: u16 = 0x2;
const RTF_HOST: u16 = 0x4;

fn sock(family: AddressFamily) -> nix::Result<OwnedFd> {
    socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
}

fn ifreq(name: &str) -> nix::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and both are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn v6(ip: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: ip.octets() }
}

/// Runs an ioctl taking a pointer to `arg` on `fd`.
fn ioctl_ptr<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> nix::Result<()> {
    // SAFETY: every request used here reads (and for SIOCG* writes) exactly one `T`, and `arg`
    // is a valid, exclusively borrowed `T` for the whole call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    Errno::result(r).map(drop)
}

/// Interface flags.
pub fn get_flags(name: &str) -> nix::Result<i16> {
    let s = sock(AddressFamily::Inet)?;
    let mut req = ifreq(name)?;
    ioctl_ptr(&s, libc::SIOCGIFFLAGS as _, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Sets or clears IFF_UP.
pub fn set_up(name: &str, up: bool) -> nix::Result<()> {
    let flags = get_flags(name)?;
    let s = sock(AddressFamily::Inet)?;
    let mut req = ifreq(name)?;
    let up_flag = libc::IFF_UP as i16;
    req.ifr_ifru.ifru_flags = if up { flags | up_flag } else { flags & !up_flag };
    ioctl_ptr(&s, libc::SIOCSIFFLAGS as _, &mut req)
}

/// Renames an interface (it must be down).
pub fn rename(name: &str, new: &str) -> nix::Result<()> {
    let s = sock(AddressFamily::Inet)?;
    let mut req = ifreq(name)?;
    let newreq = ifreq(new)?;
    req.ifr_ifru.ifru_newname = newreq.ifr_name;
    ioctl_ptr(&s, libc::SIOCSIFNAME as _, &mut req)
}

/// Sets the MTU.
pub fn set_mtu(name: &str, mtu: u32) -> nix::Result<()> {
    let s = sock(AddressFamily::Inet)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| Errno::EINVAL)?;
    ioctl_ptr(&s, libc::SIOCSIFMTU as _, &mut req)
}

/// Sets the IPv4 address and netmask.
pub fn set_ipv4(name: &str, ip: Ipv4Addr, prefix: u8) -> nix::Result<()> {
    let s = sock(AddressFamily::Inet)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(ip);
    ioctl_ptr(&s, libc::SIOCSIFADDR as _, &mut req)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ioctl_ptr(&s, libc::SIOCSIFNETMASK as _, &mut req)
}

/// Adds an IPv6 address.
pub fn add_ipv6(name: &str, ip: Ipv6Addr, prefix: u8) -> nix::Result<()> {
    let index = nix::net::if_::if_nametoindex(name)?;
    let s = sock(AddressFamily::Inet6)?;
    let mut req = libc::in6_ifreq {
        ifr6_addr: v6(ip),
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: index as libc::c_int,
    };
    ioctl_ptr(&s, libc::SIOCSIFADDR as _, &mut req)
}

/// Adds an IPv4 route to `dst/prefix` via `gateway` (or on-link) on `dev`.
pub fn add_route_v4(dst: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>, dev: &str, metric: u32) -> nix::Result<()> {
    let s = sock(AddressFamily::Inet)?;
    let mut dev_name = std::ffi::CString::new(dev).map_err(|_| Errno::EINVAL)?.into_bytes_with_nul();
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    let mut flags = RTF_UP;
    if gateway.is_some() {
        flags |= RTF_GATEWAY;
    }
    if prefix == 32 {
        flags |= RTF_HOST;
    }
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(dst),
        rt_gateway: sockaddr_v4(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_v4(Ipv4Addr::from(mask)),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        // The ioctl API stores metric + 1.
        rt_metric: i16::try_from(metric.saturating_add(1)).map_err(|_| Errno::EINVAL)?,
        rt_dev: if dev.is_empty() { std::ptr::null_mut() } else { dev_name.as_mut_ptr().cast() },
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // `dev_name` outlives the call (it is dropped at the end of this function).
    ioctl_ptr(&s, libc::SIOCADDRT as _, &mut rt)
}

/// Adds an IPv6 route.
pub fn add_route_v6(dst: Ipv6Addr, prefix: u8, gateway: Option<Ipv6Addr>, dev: &str, metric: u32) -> nix::Result<()> {
    let index = if dev.is_empty() { 0 } else { nix::net::if_::if_nametoindex(dev)? };
    let s = sock(AddressFamily::Inet6)?;
    let mut flags = u32::from(RTF_UP);
    if gateway.is_some() {
        flags |= u32::from(RTF_GATEWAY);
    }
    if prefix == 128 {
        flags |= u32::from(RTF_HOST);
    }
    let mut rt = In6RtMsg {
        rtmsg_dst: v6(dst),
        rtmsg_src: v6(Ipv6Addr::UNSPECIFIED),
        rtmsg_gateway: v6(gateway.unwrap_or(Ipv6Addr::UNSPECIFIED)),
        rtmsg_type: 0,
        rtmsg_dst_len: u16::from(prefix),
        rtmsg_src_len: 0,
        rtmsg_metric: metric,
        rtmsg_info: 0,
        rtmsg_flags: flags,
        rtmsg_ifindex: index as libc::c_int,
    };
    ioctl_ptr(&s, libc::SIOCADDRT as _, &mut rt)
}
