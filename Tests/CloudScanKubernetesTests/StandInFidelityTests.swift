import CloudScanHTTP
import CloudScanTestSupport
import Foundation
import KubernetesStandIn
import Testing

/// The stand-in against the replies recorded from a real v1.20 API server
/// (Tests/Fixtures/kubernetes-recorded, copied from shared/kubernetes/recorded): each recorded
/// request is replayed and the reply must match — status, and the body field for field once the
/// values a server makes up (uids, resourceVersions, timestamps, managedFields) are set aside.
@Suite("Kubernetes stand-in matches the recorded API server")
struct StandInFidelityTests {
    static let directory = TestDatabase.repositoryRoot.appendingPathComponent("Tests/Fixtures/kubernetes-recorded")

    struct Recorded {
        var method: String
        var path: String
        var query: [String: String]
        var headers: [String: String]
        var body: Any?
        var status: Int
        var responseBody: Any
        var contentType: String?
    }

    static func load(_ prefix: String) throws -> Recorded {
        let name = try #require(
            try FileManager.default.contentsOfDirectory(atPath: directory.path).first { $0.hasPrefix(prefix + "-") })
        let data = try Data(contentsOf: directory.appendingPathComponent(name))
        let file = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let request = try #require(file["request"] as? [String: Any])
        let response = try #require(file["response"] as? [String: Any])
        let headers = response["headers"] as? [String: String] ?? [:]
        return Recorded(
            method: request["method"] as! String, path: request["path"] as! String,
            query: request["query"] as? [String: String] ?? [:],
            headers: request["headers"] as? [String: String] ?? [:],
            body: request["body"].flatMap { $0 is NSNull ? nil : $0 }, status: response["status"] as! Int,
            responseBody: response["body"] as Any, contentType: headers["content-type"])
    }

    /// Sends a recorded request to the stand-in as it was sent to the real server (which had the
    /// admin token unless the file shows another, or — 43 — none).
    static func replay(_ recorded: Recorded, anonymous: Bool, to standIn: KubernetesStandIn) async throws -> (
        Int, Any, String?
    ) {
        var headers: [(String, String)] = recorded.headers.map { ($0.key, $0.value) }
        if recorded.headers["authorization"] == nil, !anonymous {
            headers.append(("Authorization", "Bearer \(KubernetesStandIn.adminToken)"))
        }
        var url = standIn.server + recorded.path
        if !recorded.query.isEmpty {
            url +=
                "?"
                + recorded.query.sorted { $0.key < $1.key }.map {
                    "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0.value)"
                }.joined(separator: "&")
        }
        let body = try recorded.body.map { try JSONSerialization.data(withJSONObject: $0) }
        let response = try await CurlHTTPClient().perform(
            HTTPRequest(
                method: recorded.method, url: url, headers: headers, body: body.map(Array.init), timeout: .seconds(10)))
        let text = String(decoding: response.body, as: UTF8.self)
        let parsed: Any
        if recorded.query["watch"] == "true" {
            parsed = try text.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) }
        } else if response.body.isEmpty {
            parsed = ""
        } else {
            parsed = (try? JSONSerialization.jsonObject(with: Data(response.body))) ?? text
        }
        return (response.status, parsed, response.header("content-type"))
    }

    static let volatileKeys: Set<String> = [
        "uid", "resourceVersion", "creationTimestamp", "startTime", "completionTime", "lastProbeTime",
        "lastTransitionTime", "deletionTimestamp", "controller-uid", "continue",
    ]

    /// Values a server makes up become "<v>"; managedFields (kept by the recorder, not by the
    /// stand-in) go.
    static func normalized(_ value: Any) -> Any {
        if let object = value as? [String: Any] {
            var out: [String: Any] = [:]
            for (key, inner) in object where key != "managedFields" {
                out[key] =
                    volatileKeys.contains(key) && !(inner is NSNull) && !(inner is [String: Any])
                    ? "<v>" : normalized(inner)
            }
            return out
        }
        if let array = value as? [Any] { return array.map(normalized) }
        return value
    }

    static func describe(_ value: Any) -> String {
        guard JSONSerialization.isValidJSONObject(value),
            let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys])
        else { return "\(value)" }
        return String(decoding: data, as: UTF8.self)
    }

    func expectMatch(_ prefix: String, _ standIn: KubernetesStandIn) async throws {
        let recorded = try Self.load(prefix)
        let (status, body, contentType) = try await Self.replay(recorded, anonymous: prefix == "43", to: standIn)
        #expect(status == recorded.status, "\(prefix): status")
        #expect(contentType == recorded.contentType, "\(prefix): content-type")
        let want = Self.describe(Self.normalized(recorded.responseBody))
        let got = Self.describe(Self.normalized(body))
        #expect(got == want, "\(prefix): body differs\n got: \(got)\nwant: \(want)")
    }

    func withStandIn(_ body: (KubernetesStandIn) async throws -> Void) async throws {
        let standIn = try await KubernetesStandIn.start()
        defer { Task { await standIn.stop() } }
        try await body(standIn)
    }

    @Test("create (defaults, canonical quantities), AlreadyExists, get, NotFound")
    func jobs() async throws {
        try await withStandIn { standIn in
            try await expectMatch("01", standIn)
            try await expectMatch("02", standIn)
            try await expectMatch("09", standIn)
        }
    }

    @Test("422s: missing restartPolicy, a name too long for the job-name label, an invalid label value")
    func invalid() async throws {
        try await withStandIn { standIn in
            for prefix in ["03", "04", "05"] { try await expectMatch(prefix, standIn) }
        }
    }

    @Test("unknown fields are dropped; Background delete answers a Status; deleting a missing Job is NotFound")
    func unknownFieldsAndDelete() async throws {
        try await withStandIn { standIn in
            try await expectMatch("06", standIn)
            try await expectMatch("32", standIn)
            try await expectMatch("36", standIn)
        }
    }

    @Test(
        "resourceVersionMatch without resourceVersion is 422; compacted lists are 410; a compacted watch is one ERROR event"
    )
    func expired() async throws {
        try await withStandIn { standIn in
            try await expectMatch("16", standIn)
            await standIn.cluster.compact()
            try await expectMatch("24", standIn)
            try await expectMatch("25", standIn)
            try await expectMatch("27", standIn)
        }
    }

    @Test("auth: a bad token is 401; a token with no RBAC and no token at all are 403")
    func auth() async throws {
        try await withStandIn { standIn in
            for prefix in ["40", "41", "43"] { try await expectMatch(prefix, standIn) }
        }
    }

    @Test("pod log of a missing pod is 404 (kind pods, no group)")
    func podLog() async throws {
        try await withStandIn { standIn in try await expectMatch("47", standIn) }
    }
}
