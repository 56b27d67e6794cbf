public import SMQProtocol

/// A sink that does not speak 7/MDP: every MDP send fails as if the peer were gone, so a core
/// driven by it never holds MDP work.
extension BrokerSink {
    public func sendMDPRequest(_ body: AnyObject, delivery: UInt64, to address: [UInt8]) -> SendOutcome { .gone }
    public func sendMDPReply(_ body: AnyObject, service: String, to address: [UInt8]) -> SendOutcome { .gone }
    public func sendMDP(_ frames: [[UInt8]], to address: [UInt8]) -> SendOutcome { .gone }
    public func smqFragment(fromMDP body: AnyObject, command: Command, service: String, jobID: JobID, index: UInt32, count: UInt32) -> AnyObject? {
        nil
    }
}
