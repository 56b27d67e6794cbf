// swift-tools-version: 6.1
import PackageDescription

// Layers, bottom up: the C libraries (system targets) -> SMQKeys (keys, certificates, allowlists)
// and SMQProtocol (SMQ/1 codec and the fragment pipeline: pure values, no sockets) -> SMQBroker
// (the broker's policy as a socket-free state machine) -> SecureMQ (the ZeroMQ layer, the roles and
// the broker's socket adapter) -> thin executables.
let package = Package(
    name: "SecureMQ",
    products: [
        .library(name: "SecureMQ", targets: ["SecureMQ"]),
        .executable(name: "keygen", targets: ["keygen"]),
        .executable(name: "secure-broker", targets: ["secure-broker"]),
        .executable(name: "smq", targets: ["smq"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        // Metrics (issue 13): swift-metrics is the API the core records its latency histograms
        // with; swift-prometheus renders the text format; FlyingFox serves GET /metrics (it adds
        // no package beyond itself: a clean build of the three took 38 s here, see README).
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swhitty/FlyingFox.git", from: "0.27.1"),
        // Configuration (issue 13): `secure-broker --config FILE` (JSON) and SMQ_BROKER_*
        // variables through swift-configuration, for the broker only; swift-system is already in
        // the graph through it and named here for FilePath. Its cost: a clean
        // `swift build --build-tests` took 17–22 s more CPU with them (user 152 → 174 s and
        // 146 → 163 s in two pairs of runs on the shared 2-core machine; wall time there followed
        // the other load, not the package). Yams, its YAML trait's dependency, is not fetched.
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CZeroMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CSodium", providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(name: "CCrypto", providers: [.apt(["libssl-dev"])]),

        .target(
            name: "SMQKeys",
            dependencies: ["CSodium", "SMQProtocol", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "SMQProtocol",
            dependencies: ["CCrypto"]
        ),
        .target(
            name: "SMQBroker",
            dependencies: [
                "SMQKeys", "SMQProtocol",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "SecureMQ",
            dependencies: [
                "SMQKeys", "SMQProtocol", "SMQBroker", "CZeroMQ", "CSodium",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .executableTarget(
            name: "keygen",
            dependencies: ["SecureMQ", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "secure-broker",
            dependencies: [
                "SecureMQ", "SMQBroker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "FlyingFox", package: "FlyingFox"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "smq",
            dependencies: [
                "SecureMQ",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .testTarget(
            name: "SMQKeysTests",
            dependencies: ["SMQKeys", "CSodium", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(
            name: "SMQProtocolTests",
            dependencies: ["SMQProtocol", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(
            name: "SMQBrokerTests",
            dependencies: [
                "SMQBroker", "SMQKeys", "SMQProtocol",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "SecureMQTests",
            dependencies: [
                "SecureMQ", "SMQKeys", "SMQProtocol", "CZeroMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "CLITests",
            dependencies: ["SMQKeys"]
        ),
    ]
)

// Strict settings for every Swift target, as swift-log does.
for target in package.targets where [.executable, .test, .regular].contains(target.type) {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    settings.append(.enableUpcomingFeature("InternalImportsByDefault"))
    target.swiftSettings = settings
}
