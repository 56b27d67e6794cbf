import PropertyBased
@testable import SMQProtocol
import Testing

/// nginx's smooth weighted round-robin, the oracle for shares and lag: every step each worker's
/// current weight grows by its weight, the largest current is picked (the first on a tie) and
/// loses the total.
struct SmoothWeightedRoundRobin {
    let weights: [Int]
    var current: [Int]

    init(weights: [Int]) {
        self.weights = weights
        current = Array(repeating: 0, count: weights.count)
    }

    mutating func pick() -> Int {
        var best = 0
        for i in weights.indices {
            current[i] += weights[i]
            if current[i] > current[best] { best = i }
        }
        current[best] -= weights.reduce(0, +)
        return best
    }
}

/// Runs both schedulers side by side and checks the lag at every step and the shares at the end.
func compareWithNginx(weights: [Int], picks: Int = 7000, shareTolerance: Double? = 0.03, sourceLocation: SourceLocation = #_sourceLocation) {
    var ours = StrideScheduler<Int>()
    for (id, weight) in weights.enumerated() { ours.add(id, weight: weight) }
    var nginx = SmoothWeightedRoundRobin(weights: weights)
    var oursCount = Array(repeating: 0, count: weights.count)
    var nginxCount = oursCount
    var worstLag = 0
    var worstIdeal = 0.0
    var step = 0
    let totalWeight = Double(weights.reduce(0, +))
    for _ in 0..<picks {
        guard let picked = ours.pick() else {
            Issue.record("no pick", sourceLocation: sourceLocation)
            return
        }
        oursCount[picked] += 1
        nginxCount[nginx.pick()] += 1
        for i in weights.indices { worstLag = max(worstLag, abs(oursCount[i] - nginxCount[i])) }
        // WF²Q+'s bound: within one pick of the ideal (fluid) share at every step.
        step += 1
        for i in weights.indices {
            worstIdeal = max(worstIdeal, abs(Double(oursCount[i]) - Double(step) * Double(weights[i]) / totalWeight))
        }
    }
    #expect(worstLag <= 1, "weights \(weights): lag \(worstLag) behind nginx", sourceLocation: sourceLocation)
    #expect(worstIdeal < 1.0001, "weights \(weights): \(worstIdeal) picks off the ideal share", sourceLocation: sourceLocation)
    if let shareTolerance {
        let total = Double(weights.reduce(0, +))
        for i in weights.indices {
            let ideal = Double(picks) * Double(weights[i]) / total
            #expect(
                abs(Double(oursCount[i]) - ideal) <= shareTolerance * ideal,
                "weights \(weights): worker \(i) got \(oursCount[i]), ideal \(ideal)", sourceLocation: sourceLocation)
        }
    }
}

@Suite("Stride scheduler")
struct StrideSchedulerTests {
    @Test(arguments: [[1, 2, 4], [5, 1, 1], [1, 1, 1], [1], [3, 7], [1, 1000], [10, 20, 30, 40], [2, 3, 5, 7, 11, 13]])
    func sharesAndLagAgainstNginx(weights: [Int]) {
        compareWithNginx(weights: weights)
    }

    @Test("a crowd of light workers beside a heavy one is spread, not served in a burst",
          arguments: [[1, 1, 1, 1, 13], Array(repeating: 1, count: 19) + [1000], [1, 1, 1, 500], [2, 2, 2, 2, 2, 2, 97]])
    func lightCrowdBesideAHeavyWorker(weights: [Int]) {
        // Plain earliest-deadline scheduling served [1, 1, 1, 1, 13] as seven heavy picks, then the
        // four light ones in a row: two picks off nginx and 1.65 off the ideal share.
        compareWithNginx(weights: weights, picks: 4000, shareTolerance: nil)
    }

    @Test func randomWeightSetsAgainstNginx() async {
        // Shares within ±3 % where every worker's share is large enough to measure it.
        await propertyCheck(count: 60, input: Gen.int(in: 1...10).array(of: 1...6)) { weights in
            compareWithNginx(weights: weights)
        }
        // The lag bound holds for any weights, however uneven.
        await propertyCheck(count: 60, input: Gen.int(in: 1...1000).array(of: 1...20)) { weights in
            compareWithNginx(weights: weights, picks: 3000, shareTolerance: nil)
        }
    }

    @Test func theFirstPicksFollowTheWeights() {
        var scheduler = StrideScheduler<String>()
        scheduler.add("a", weight: 1)
        scheduler.add("b", weight: 2)
        scheduler.add("c", weight: 4)
        let picks = (0..<7).compactMap { _ in scheduler.pick() }
        #expect(picks.filter { $0 == "c" }.count == 4)
        #expect(picks.filter { $0 == "b" }.count == 2)
        #expect(picks.filter { $0 == "a" }.count == 1)
        // Smooth: the heavy worker never takes more than two turns in a row here.
        #expect(!picks.joined().contains("ccc"))
    }

    @Test func roundRobinIgnoresWeights() async {
        await propertyCheck(count: 50, input: Gen.int(in: 1...1000).array(of: 1...12)) { weights in
            var scheduler = StrideScheduler<Int>(strategy: .roundRobin)
            for (id, weight) in weights.enumerated() { scheduler.add(id, weight: weight) }
            var counts = Array(repeating: 0, count: weights.count)
            for _ in 0..<(weights.count * 50 + 3) {
                counts[scheduler.pick()!] += 1
                #expect(counts.max()! - counts.min()! <= 1)
            }
            // Ties go first come, first served: the order of addition.
            var fresh = StrideScheduler<Int>(strategy: .roundRobin)
            for (id, weight) in weights.enumerated() { fresh.add(id, weight: weight) }
            #expect((0..<weights.count).map { _ in fresh.pick()! } == Array(weights.indices))
            #expect(scheduler.weight(of: 0) == weights[0])
        }
    }

    @Test func aSuspendedWorkerIsNotPickedAndGetsNoBurstOnResume() {
        var scheduler = StrideScheduler<String>()
        scheduler.add("a", weight: 1)
        scheduler.add("b", weight: 1)
        let suspended = scheduler.suspend("a")
        #expect(suspended)
        let suspendedAgain = scheduler.suspend("a")
        #expect(!suspendedAgain)
        #expect(!scheduler.isEligible("a") && scheduler.contains("a"))
        for _ in 0..<100 { #expect(scheduler.pick() == "b") }
        let resumed = scheduler.resume("a")
        #expect(resumed)
        let resumedAgain = scheduler.resume("a")
        #expect(!resumedAgain)
        // Re-entered at max(its start, now) = now, one stride to its deadline: no burst of the
        // 100 turns it missed, and from now on they alternate.
        #expect(scheduler.deadline(of: "a") == scheduler.now + StrideScheduler<String>.unitStride)
        let next = (0..<10).compactMap { _ in scheduler.pick() }
        #expect(next.filter { $0 == "a" }.count == 5)
        #expect(zip(next, next.dropFirst()).allSatisfy { $0 != $1 })
    }

    @Test func aWorkerResumedEarlyKeepsItsDeadline() {
        var scheduler = StrideScheduler<String>()
        scheduler.add("a", weight: 1)
        scheduler.add("b", weight: 1)
        #expect(scheduler.pick() == "a")
        let deadline = scheduler.deadline(of: "a")!
        scheduler.suspend("a")
        scheduler.resume("a")
        #expect(scheduler.deadline(of: "a") == deadline)
        #expect(scheduler.pick() == "b")
        #expect(scheduler.pick() == "a")
    }

    @Test func nothingEligibleMeansNoPick() {
        var scheduler = StrideScheduler<Int>()
        #expect(scheduler.pick() == nil)
        scheduler.add(1, weight: 3)
        scheduler.suspend(1)
        #expect(scheduler.pick() == nil)
        #expect(scheduler.peek == nil)
        scheduler.resume(1)
        #expect(scheduler.peek == 1)
        #expect(scheduler.pick() == 1)
    }

    @Test func addingAndRemovingKeepsTheShares() {
        var scheduler = StrideScheduler<String>()
        scheduler.add("a", weight: 1)
        scheduler.add("b", weight: 1)
        for _ in 0..<1001 { _ = scheduler.pick() }
        // A newcomer starts now, one stride to its deadline: it joins the rotation at once.
        let added = scheduler.add("c", weight: 1)
        #expect(added)
        let addedAgain = scheduler.add("c", weight: 5)
        #expect(!addedAgain)
        #expect(scheduler.deadline(of: "c") == scheduler.now + StrideScheduler<String>.unitStride)
        let next = (0..<3).compactMap { _ in scheduler.pick() }
        #expect(Set(next) == ["a", "b", "c"])
        let removed = scheduler.remove("a")
        #expect(removed)
        let removedAgain = scheduler.remove("a")
        #expect(!removedAgain)
        #expect(scheduler.invariantViolation() == nil)
        var counts: [String: Int] = [:]
        for _ in 0..<1000 { counts[scheduler.pick()!, default: 0] += 1 }
        #expect(counts == ["b": 500, "c": 500])
        #expect(scheduler.count == 2)
    }

    @Test func changingAWeightChangesTheShare() {
        var scheduler = StrideScheduler<String>()
        scheduler.add("a", weight: 1)
        scheduler.add("b", weight: 1)
        for _ in 0..<11 { _ = scheduler.pick() }
        let reweighted = scheduler.setWeight("a", weight: 3)
        #expect(reweighted)
        let reweightedAgain = scheduler.setWeight("zz", weight: 3)
        #expect(!reweightedAgain)
        #expect(scheduler.weight(of: "a") == 3)
        var counts: [String: Int] = [:]
        for _ in 0..<4000 { counts[scheduler.pick()!, default: 0] += 1 }
        #expect(abs(counts["a", default: 0] - 3000) <= 2)
    }

    @Test func virtualTimeIsRebasedWithoutChangingAnyPick() {
        var reference = StrideScheduler<Int>()
        var rebased = StrideScheduler<Int>()
        rebased.rebaseThreshold = 1 << 36  // every 16 weight-1 turns
        let weights = [1, 3, 7, 2]
        for (id, weight) in weights.enumerated() {
            reference.add(id, weight: weight)
            rebased.add(id, weight: weight)
        }
        var sequenceA: [Int] = []
        var sequenceB: [Int] = []
        for step in 0..<5000 {
            // A worker suspended across several rebases comes back at now, as without rebasing.
            if step == 100 {
                reference.suspend(2)
                rebased.suspend(2)
            }
            if step == 900 {
                reference.resume(2)
                rebased.resume(2)
            }
            sequenceA.append(reference.pick()!)
            sequenceB.append(rebased.pick()!)
            #expect(rebased.now < rebased.rebaseThreshold)
        }
        #expect(sequenceA == sequenceB)
        #expect(reference.now > 1 << 36)
        #expect(rebased.invariantViolation() == nil)
    }

    @Test func randomOperationsKeepTheHeapInvariant() async {
        await propertyCheck(count: 100, input: Gen<UInt64>.value()) { seed in
            var rng = SplitMix64(seed: seed)
            var scheduler = StrideScheduler<Int>()
            scheduler.rebaseThreshold = 1 << 40
            var eligible: Set<Int> = []
            var suspended: Set<Int> = []
            for _ in 0..<400 {
                let id = Int.random(in: 0..<24, using: &rng)
                let known = eligible.contains(id) || suspended.contains(id)
                switch Int.random(in: 0..<10, using: &rng) {
                case 0, 1:
                    let added = scheduler.add(id, weight: Int.random(in: 1...100, using: &rng))
                    #expect(added == !known)
                    if !known { eligible.insert(id) }
                case 2:
                    let removed = scheduler.remove(id)
                    #expect(removed == known)
                    eligible.remove(id)
                    suspended.remove(id)
                case 3:
                    let reweighted = scheduler.setWeight(id, weight: Int.random(in: 1...100, using: &rng))
                    #expect(reweighted == known)
                case 4:
                    #expect(scheduler.suspend(id) == eligible.contains(id))
                    if eligible.remove(id) != nil { suspended.insert(id) }
                case 5:
                    #expect(scheduler.resume(id) == suspended.contains(id))
                    if suspended.remove(id) != nil { eligible.insert(id) }
                default:
                    let expected = scheduler.peek
                    let picked = scheduler.pick()
                    #expect(picked == expected)
                    if let picked {
                        #expect(eligible.contains(picked))
                    } else {
                        #expect(eligible.isEmpty)
                    }
                }
                if let violation = scheduler.invariantViolation() {
                    Issue.record("\(violation)")
                    return
                }
                #expect(scheduler.eligibleCount == eligible.count)
                #expect(scheduler.count == eligible.count + suspended.count)
                for known in eligible { #expect(scheduler.isEligible(known)) }
            }
        }
    }
}
