import CloudScanCore
import Foundation
import Testing

@Suite("RFC 3339 timestamps")
struct RFC3339Tests {
    @Test("formatting agrees with ISO8601DateFormatter to the microsecond, across eras, and parses back")
    func agreesWithFoundation() throws {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        var generator = SystemRandomNumberGenerator()
        let fixed: [Double] = [
            0, -1, 951_782_400, 1_709_164_800.5, 4_102_444_799.999999, -2_208_988_800, 253_402_300_799,
        ]
        let random = (0..<2000).map { _ in
            Double(Int64.random(in: -2_000_000_000_000_000...253_402_300_799_000_000, using: &generator)) / 1e6
        }
        for seconds in fixed + random {
            let date = Date(timeIntervalSince1970: seconds)
            let text = RFC3339.string(from: date, fractionDigits: 6)
            #expect(text.count == 27 && text.hasSuffix("Z"), "\(text)")
            let millis = RFC3339.string(from: date)
            #expect(millis.count == 24 && millis.prefix(23) == text.prefix(23), "\(millis) vs \(text)")
            // Whole seconds agree with Foundation's formatter (floor of the microsecond-rounded time).
            let micros = (seconds * 1e6).rounded()
            let whole = Date(timeIntervalSince1970: (micros / 1e6).rounded(.down))
            #expect(String(text.prefix(19)) + "Z" == formatter.string(from: whole), "\(seconds) → \(text)")
            let parsed = try #require(RFC3339.date(from: text))
            #expect(abs(parsed.timeIntervalSince1970 - micros / 1e6) < 2e-6, "\(text)")
        }
    }

    @Test("parsing: fractions optional, Z or numeric offsets; malformed and impossible dates refused")
    func parsing() {
        #expect(RFC3339.date(from: "2026-11-28T05:00:00Z")?.timeIntervalSince1970 == 1_795_842_000)
        #expect(RFC3339.date(from: "2026-11-28T06:30:00+01:30")?.timeIntervalSince1970 == 1_795_842_000)
        #expect(RFC3339.date(from: "2026-11-28T03:00:00-02:00")?.timeIntervalSince1970 == 1_795_842_000)
        #expect(RFC3339.date(from: "2026-11-28T05:00:00.25Z")?.timeIntervalSince1970 == 1_795_842_000.25)
        #expect(RFC3339.date(from: "2024-02-29T00:00:00Z") != nil)
        for bad in [
            "", "2026-11-28", "2026-11-28T05:00:00", "2023-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
            "2026-11-28T24:00:00Z", "2026-11-28T05:00:00.Z", "2026-11-28T05:00:00+0100", "2026-11-28T05:00:00Zjunk",
            "2026-11-2xT05:00:00Z",
        ] {
            #expect(RFC3339.date(from: bad) == nil, "\(bad) was accepted")
        }
    }
}
