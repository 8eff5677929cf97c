//! The tc redirect between a pod interface and its tap (Kata's `tcfilter` model): each side
//! gets an ingress qdisc whose one u32 filter, matching every frame, redirects it to the egress
//! of the other side. No bridge, and the pod interface keeps its addresses.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::rtnl::{Rtnl, RtnlError};

/// The ingress qdisc's handle (ffff:) and its parent (TC_H_INGRESS).
const INGRESS_HANDLE: TcHandle = TcHandle { major: 0xffff, minor: 0 };
const INGRESS_PARENT: TcHandle = TcHandle { major: 0xffff, minor: 0xfff1 };
/// ETH_P_ALL, in network byte order as tcm_info wants it.
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The filter's priority (the qdisc holds only this filter).
const FILTER_PRIO: u32 = 1;
/// The kind names the kernel knows these by.
const INGRESS: &str = "ingress";
const U32: &str = "u32";
const MIRRED: &str = "mirred";

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = INGRESS_PARENT;
    m.attributes.push(TcAttribute::Kind(INGRESS.into()));
    m
}

/// Adds an ingress qdisc to interface `index`; fails (EEXIST) if it already has one, so a
/// qdisc husk did not make is never taken over.
pub fn add_ingress(rtnl: &mut Rtnl, index: u32) -> Result<(), RtnlError> {
    rtnl.ack(RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)), NLM_F_CREATE | NLM_F_EXCL)
}

/// Removes the ingress qdisc of interface `index`, and with it its filters.
pub fn del_ingress(rtnl: &mut Rtnl, index: u32) -> Result<(), RtnlError> {
    rtnl.ack(RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)), 0)
}

/// Whether interface `index` has an ingress qdisc.
pub fn has_ingress(rtnl: &mut Rtnl, index: u32) -> Result<bool, RtnlError> {
    let all = rtnl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))?;
    Ok(all.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == index as i32 && q.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == INGRESS))
        }
        _ => false,
    }))
}

/// Adds, on the ingress qdisc of interface `from`, a filter that redirects every frame to the
/// egress of interface `to` (`tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0
/// action mirred egress redirect dev TO`).
pub fn add_redirect(rtnl: &mut Rtnl, from: u32, to: u32) -> Result<(), RtnlError> {
    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_HANDLE;
    m.header.info = (FILTER_PRIO << 16) | ETH_P_ALL_BE;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes =
        vec![TcActionAttribute::Kind(MIRRED.into()), TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))])];
    m.attributes = vec![
        TcAttribute::Kind(U32.into()),
        TcAttribute::Options(vec![TcOption::U32(TcFilterU32Option::Selector(sel)), TcOption::U32(TcFilterU32Option::Action(vec![action]))]),
    ];
    rtnl.ack(RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_CREATE | NLM_F_EXCL)
}

/// The mirred redirects of one u32 filter: the interface index each sends to (0 once that
/// interface is gone).
fn redirects(f: &TcMessage) -> impl Iterator<Item = u32> + '_ {
    let options = f.attributes.iter().filter_map(|a| if let TcAttribute::Options(o) = a { Some(o) } else { None }).flatten();
    let actions = options.filter_map(|o| if let TcOption::U32(TcFilterU32Option::Action(a)) = o { Some(a) } else { None }).flatten();
    let action_options = actions.flat_map(|a| &a.attributes).filter_map(|a| if let TcActionAttribute::Options(o) = a { Some(o) } else { None }).flatten();
    action_options.filter_map(|o| if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = o { Some(p.ifindex) } else { None })
}

/// The interfaces the filters on `from`'s ingress qdisc redirect to (empty without one).
pub fn redirect_targets(rtnl: &mut Rtnl, from: u32) -> Result<Vec<u32>, RtnlError> {
    let mut q = TcMessage::with_index(from as i32);
    q.header.parent = INGRESS_HANDLE;
    let all = match rtnl.dump(RouteNetlinkMessage::GetTrafficFilter(q)) {
        Ok(all) => all,
        // No ingress qdisc (EINVAL), or no interface any more.
        Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENODEV | libc::ENOENT)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(all.iter().filter_map(|m| if let RouteNetlinkMessage::NewTrafficFilter(f) = m { Some(f) } else { None }).flat_map(redirects).collect())
}
