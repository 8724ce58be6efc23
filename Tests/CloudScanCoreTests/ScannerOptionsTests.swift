import CloudScanCore
import Foundation
import Testing

@Suite("scanner options")
struct ScannerOptionsTests {
    @Test("parsed and applied: disabled scanners, excluded paths by pattern")
    func applied() throws {
        let options = try ScannerOptions(
            .object([
                "bandit": .object(["enabled": .bool(false)]),
                "semgrep": .object(["exclude_paths": .array([.string("tests/*"), .string("*.min.js")])]),
            ]))
        #expect(options.isEnabled("bandit") == false && options.isEnabled("semgrep") && options.isEnabled("gitleaks"))
        #expect(options.excludes("semgrep", path: "tests/unit/test_a.py"))
        #expect(options.excludes("semgrep", path: "./tests/a.py"))
        #expect(options.excludes("semgrep", path: "web/app.min.js"))
        #expect(options.excludes("semgrep", path: "src/app.py") == false)
        #expect(options.excludes("semgrep", path: nil) == false)
        #expect(options.excludes("bandit", path: "tests/a.py") == false, "patterns are per scanner")
    }

    @Test("refused with the field named: not an object, unknown option, wrong types, bad names, too many patterns")
    func refused() {
        let cases: [(JSONValue, String)] = [
            (.array([]), "scanner_options"),
            (.object(["Semgrep!": .object([:])]), "scanner_options"),
            (.object(["semgrep": .bool(true)]), "scanner_options.semgrep"),
            (
                .object(["semgrep": .object(["args": .array([.string("--config=http://x")])])]),
                "scanner_options.semgrep.args"
            ),
            (.object(["semgrep": .object(["enabled": .string("no")])]), "scanner_options.semgrep.enabled"),
            (
                .object(["semgrep": .object(["exclude_paths": .string("tests/*")])]),
                "scanner_options.semgrep.exclude_paths"
            ),
            (
                .object(["semgrep": .object(["exclude_paths": .array([.string("")])])]),
                "scanner_options.semgrep.exclude_paths"
            ),
            (
                .object(["semgrep": .object(["exclude_paths": .array(Array(repeating: .string("a"), count: 101))])]),
                "scanner_options.semgrep.exclude_paths"
            ),
        ]
        for (value, field) in cases {
            #expect(throws: ScanServiceError.self) { try ScannerOptions(value) }
            do {
                _ = try ScannerOptions(value)
            } catch {
                #expect(error.field == field, "\(value.jsonText): \(error)")
            }
        }
    }
}
