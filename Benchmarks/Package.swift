// swift-tools-version: 6.1
import PackageDescription

// Micro-benchmarks of SecureMQ's pure-value layer (the SMQ/1 codec, the fragment pipeline, the
// stride scheduler), as swift-nio keeps its own in a nested package: never built by the normal
// `swift build` / `swift test` of the root package. Run from this folder:
//   swift package benchmark                                  all, with malloc counts
//   swift package benchmark thresholds check                 mallocs against Thresholds/
// Static thresholds are on malloc counts only (deterministic); times are reported, never checked.
let package = Package(
    name: "SecureMQBenchmarks",
    platforms: [.macOS("14")],
    dependencies: [
        // The library product `SecureMQ` re-exports SMQProtocol and SMQKeys (@_exported).
        .package(name: "SecureMQ", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "ProtocolBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "SecureMQ", package: "SecureMQ"),
            ],
            path: "Benchmarks/ProtocolBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
