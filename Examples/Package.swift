// swift-tools-version: 6.1
// The README's quick start as a package of its own that depends on SecureMQ the way yours will:
// scripts/test builds it and runs its programs against each other, so the docs cannot rot.
import PackageDescription

let package = Package(
    name: "SecureMQExamples",
    dependencies: [
        // SecureMQ cloned beside this package. scripts/test-examples lays the repository out
        // that way (symbolic links), so this file is exactly what the README tells you to write.
        .package(path: "../SecureMQ"),
    ],
    targets: [
        .executableTarget(name: "example-broker", dependencies: [.product(name: "SecureMQ", package: "SecureMQ")]),
        .executableTarget(name: "example-worker", dependencies: [.product(name: "SecureMQ", package: "SecureMQ")]),
        .executableTarget(name: "example-client", dependencies: [.product(name: "SecureMQ", package: "SecureMQ")]),
        // The README's shorter snippets, compiled (not run).
        .target(name: "Snippets", dependencies: [.product(name: "SecureMQ", package: "SecureMQ")]),
    ]
)
