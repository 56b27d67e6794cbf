/// A set of fragment indexes whose memory follows the indexes used, not the largest possible
/// one: a job's count comes from the peer, and a dense bitset of 2^32 bits would be 512 MiB.
struct SparseBitSet {
    private var pages: [UInt32: [UInt64]] = [:]
    private static let wordsPerPage = 64   // 4096 indexes a page

    private(set) var count = 0

    func contains(_ index: UInt32) -> Bool {
        guard let page = pages[index >> 12] else { return false }
        let bit = Int(index & 0xFFF)
        return page[bit >> 6] & (1 << UInt64(bit & 63)) != 0
    }

    /// Inserts; returns false when it was already there.
    @discardableResult
    mutating func insert(_ index: UInt32) -> Bool {
        let bit = Int(index & 0xFFF)
        let mask: UInt64 = 1 << UInt64(bit & 63)
        var inserted = false
        pages[index >> 12, default: [UInt64](repeating: 0, count: Self.wordsPerPage)].withUnsafeMutableBufferPointer { words in
            if words[bit >> 6] & mask == 0 {
                words[bit >> 6] |= mask
                inserted = true
            }
        }
        if inserted { count += 1 }
        return inserted
    }

    mutating func remove(_ index: UInt32) {
        let key = index >> 12
        guard var page = pages[key] else { return }
        let bit = Int(index & 0xFFF)
        let mask: UInt64 = 1 << UInt64(bit & 63)
        guard page[bit >> 6] & mask != 0 else { return }
        page[bit >> 6] &= ~mask
        count -= 1
        if page.allSatisfy({ $0 == 0 }) { pages[key] = nil } else { pages[key] = page }
    }
}
