import CoreMetrics

/// What a client reports through swift-metrics (issue 13). The handles are made once per client,
/// when it connects; recording is one call on the client's thread, with no allocation.
///
/// - `securemq_client_jobs_total{outcome="completed"|"failed"}`: jobs that ended (a cancelled
///   job or one past its deadline counts as failed).
/// - `securemq_client_fragments_resubmitted_total`: fragments and requests sent again after a
///   broker was lost (to another broker, or to the same one once it reconnected).
/// - `securemq_client_failovers_total`: brokers lost (dropped, refused, silent, draining) while
///   the client had work placed there, when it has several brokers.
/// - `securemq_client_brokers_connected`: brokers this client can place work on now. A `Meter`
///   (a gauge moved up and down), so the clients of one process add up under one label.
struct ClientMetrics {
    let jobsCompleted: Counter
    let jobsFailed: Counter
    let fragmentsResubmitted: Counter
    let failovers: Counter
    let brokersConnected: Meter

    init(factory: (any MetricsFactory)?) {
        let factory = factory ?? MetricsSystem.factory
        jobsCompleted = Counter(label: "securemq_client_jobs_total", dimensions: [("outcome", "completed")], factory: factory)
        jobsFailed = Counter(label: "securemq_client_jobs_total", dimensions: [("outcome", "failed")], factory: factory)
        fragmentsResubmitted = Counter(label: "securemq_client_fragments_resubmitted_total", factory: factory)
        failovers = Counter(label: "securemq_client_failovers_total", factory: factory)
        brokersConnected = Meter(label: "securemq_client_brokers_connected", factory: factory)
    }
}
