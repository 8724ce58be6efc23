import CloudScanCore
import CloudScanInbound
import CloudScanRunner
import Foundation
import Testing

@Suite("SARIF → findings")
struct SARIFNormalizerTests {
    static func document(_ results: [String], rules: String = "[]") throws -> JSONValue {
        let text =
            #"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"t","rules":\#(rules)}},"results":[\#(results.joined(separator: ","))]}]}"#
        return try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    static func result(rule: String = "r1", line: Int, snippet: String?, path: String = "src/a.py", extra: String = "")
        -> String
    {
        let region =
            snippet.map { #"{"startLine":\#(line),"snippet":{"text":"\#($0)"}}"# } ?? #"{"startLine":\#(line)}"#
        return
            #"{"ruleId":"\#(rule)","message":{"text":"m"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"\#(path)"},"region":\#(region)}}]\#(extra)}"#
    }

    @Test("the fingerprint survives the code moving, and differs for different code or a second occurrence")
    func fingerprints() throws {
        var before = SARIFNormalizer(scanner: "s", root: "/nowhere")
        var after = SARIFNormalizer(scanner: "s", root: "/nowhere")
        let old = try before.findings(from: Self.document([Self.result(line: 10, snippet: "x = eval(y)")]))
        let moved = try after.findings(
            from: Self.document([
                Self.result(line: 42, snippet: "  x  =  eval(y)"),  // moved and re-indented
                Self.result(line: 50, snippet: "x = eval(y)"),  // the same line again further down
                Self.result(line: 60, snippet: "z = eval(w)"),
            ]))
        #expect(old[0].fingerprint == moved[0].fingerprint)
        #expect(Set(moved.map(\.fingerprint)).count == 3)
        // Another scanner's identical result is another finding.
        var other = SARIFNormalizer(scanner: "other", root: "/nowhere")
        #expect(
            try other.findings(from: Self.document([Self.result(line: 10, snippet: "x = eval(y)")]))[0].fingerprint
                != old[0].fingerprint)
        // partialFingerprints win over the snippet.
        var partial = SARIFNormalizer(scanner: "s", root: "/nowhere")
        let withPartial = try partial.findings(
            from: Self.document([
                Self.result(line: 1, snippet: "a", extra: #","partialFingerprints":{"primaryLocationLineHash":"abc"}"#),
                Self.result(line: 9, snippet: "b", extra: #","partialFingerprints":{"primaryLocationLineHash":"abc"}"#),
            ]))
        #expect(withPartial[0].fingerprint != withPartial[1].fingerprint, "two occurrences stay two findings")
        var partialAgain = SARIFNormalizer(scanner: "s", root: "/nowhere")
        #expect(
            try partialAgain.findings(
                from: Self.document([
                    Self.result(
                        line: 77, snippet: "changed",
                        extra: #","partialFingerprints":{"primaryLocationLineHash":"abc"}"#)
                ]))[0].fingerprint == withPartial[0].fingerprint)
    }

    @Test("severity from security-severity bands, else the level, else the rule's default level")
    func severities() throws {
        let rules =
            #"[{"id":"crit","properties":{"security-severity":"9.8"}},{"id":"hi","properties":{"security-severity":"7.0"}},{"id":"med","properties":{"security-severity":"4.0"}},{"id":"lo","properties":{"security-severity":"0.1"}},{"id":"zero","properties":{"security-severity":"0"}},{"id":"noteRule","defaultConfiguration":{"level":"note"}}]"#
        var normalizer = SARIFNormalizer(scanner: "s", root: "/r")
        let findings = try normalizer.findings(
            from: Self.document(
                [
                    Self.result(rule: "crit", line: 1, snippet: "1"), Self.result(rule: "hi", line: 2, snippet: "2"),
                    Self.result(rule: "med", line: 3, snippet: "3"), Self.result(rule: "lo", line: 4, snippet: "4"),
                    Self.result(rule: "zero", line: 5, snippet: "5"),
                    Self.result(rule: "x", line: 6, snippet: "6", extra: #","level":"error""#),
                    Self.result(rule: "x", line: 7, snippet: "7", extra: #","level":"none""#),
                    Self.result(rule: "noteRule", line: 8, snippet: "8"),
                    Self.result(rule: "x", line: 9, snippet: "9"),
                    Self.result(rule: "x", line: 10, snippet: "10", extra: #","suppressions":[{"kind":"inSource"}]"#),
                ], rules: rules))
        #expect(findings.map(\.severity) == [.critical, .high, .medium, .low, .info, .high, .info, .low, .medium])
    }

    @Test("paths: file:// URIs under the root, ./ prefixes and %SRCROOT% come out relative")
    func paths() throws {
        var normalizer = SARIFNormalizer(scanner: "s", root: "/work/scan/src")
        let findings = try normalizer.findings(
            from: Self.document([
                Self.result(line: 1, snippet: "a", path: "file:///work/scan/src/app/x.py"),
                Self.result(line: 2, snippet: "b", path: "./app/y.py"),
                Self.result(line: 3, snippet: "c", path: "%SRCROOT%/app/z.py"),
                Self.result(line: 4, snippet: "d", path: "app/with%20space.py"),
            ]))
        #expect(findings.map(\.path) == ["app/x.py", "app/y.py", "app/z.py", "app/with space.py"])
    }
}
