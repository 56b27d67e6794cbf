import Logging
/// The budget: what every client holds, counted where it changes, and the share of it one client
/// may take (PROTOCOL.md C36, C37).
extension BrokerCore {
    /// Whether a client may take on `cost` more units and one more fragment: within the byte
    /// budget and the fragment limit, and within its share of both, max(one fragment,
    /// limit / (clients holding something other than this one + 2)) — so a lone client may fill
    /// half, and a newcomer always finds room while others hold their shares.
    func admits(cost: Int, for key: PeerKey) -> Bool {
        guard bytesHeld + cost <= rules.byteBudget, fragmentsHeld + 1 <= rules.maxFragments else { return false }
        let others = holdingClients - (key.account.isActive ? 1 : 0)
        let byteShare = max(rules.maxFragmentCost, rules.byteBudget / (others + 2))
        let countShare = max(1, rules.maxFragments / (others + 2))
        return key.account.bytes + cost <= byteShare && key.account.fragments + 1 <= countShare
    }

    func hold(cost: Int, for key: PeerKey) {
        if !key.account.isActive { holdingClients += 1 }
        key.account.bytes += cost
        key.account.fragments += 1
        bytesHeld += cost
        fragmentsHeld += 1
        counters.peakBytesHeld = max(counters.peakBytesHeld, bytesHeld)
        counters.peakFragmentsHeld = max(counters.peakFragmentsHeld, fragmentsHeld)
    }

    func release(cost: Int, for key: PeerKey) {
        key.account.bytes -= cost
        key.account.fragments -= 1
        bytesHeld -= cost
        fragmentsHeld -= 1
        if !key.account.isActive { holdingClients -= 1 }
    }
}
