import CloudScanCore
import CloudScanHTTP
import Foundation

/// Turns a scan's artifact reference into a URL a runner can fetch: https, http and file URLs as
/// they are; `s3://bucket/key` through the storage service's GetArtifact, which answers a
/// presigned URL.
///
/// The storage contract (`STORAGE_URL`, `STORAGE_TOKEN`):
/// `GET {STORAGE_URL}/v1/artifacts?ref=<reference>` with `Authorization: Bearer <token>` and
/// `X-Organization-Id: <uuid>` → `200 {"url": "https://…", "expires_at": "<RFC 3339>",
/// "sha256": "<hex>"?}`; `404` the artifact does not exist and `403` it is not the organization's
/// (the scan fails); anything else is transient (the dispatch is retried).
public struct ArtifactResolver: Sendable {
    public struct Resolved: Sendable, Equatable {
        public var url: String
        public var sha256: String?
    }

    public let storageURL: String?
    /// What this deployment accepts; checked again here, so a scan created before a stricter
    /// policy (or by any path) never reaches a runner with a refused URL.
    public let policy: ArtifactPolicy
    let token: String?
    let http: CurlHTTPClient

    public init(
        storageURL: String? = nil, token: String? = nil, policy: ArtifactPolicy = .standard,
        http: CurlHTTPClient = .init()
    ) {
        self.storageURL = storageURL.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.token = token
        self.policy = policy
        self.http = http
    }

    public func resolve(_ reference: String, organizationID: UUID) async throws -> Resolved {
        do {
            try policy.check(reference, organizationID: organizationID)
        } catch {
            throw JobBackendError(permanent: true, reason: "artifact_refused", message: error.message)
        }
        if ["https://", "http://", "file://"].contains(where: reference.hasPrefix) {
            return Resolved(url: reference, sha256: nil)
        }
        guard reference.hasPrefix("s3://") else {
            throw JobBackendError(
                permanent: true, reason: "artifact_unsupported", message: "unsupported artifact reference")
        }
        guard let storageURL else {
            throw JobBackendError(
                permanent: true, reason: "artifact_unresolvable", message: "no STORAGE_URL to resolve s3:// references")
        }
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        var headers = [("Accept", "application/json"), ("X-Organization-Id", organizationID.uuidString.lowercased())]
        if let token { headers.append(("Authorization", "Bearer \(token)")) }
        let response: HTTPResponse
        do {
            response = try await http.perform(
                HTTPRequest(
                    url:
                        "\(storageURL)/v1/artifacts?ref=\(reference.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")",
                    headers: headers, timeout: .seconds(10), maximumResponseBytes: 64 << 10))
        } catch {
            throw JobBackendError(permanent: false, reason: "storage_unavailable", message: "\(error)")
        }
        switch response.status {
        case 200:
            struct Reply: Decodable {
                var url: String
                var sha256: String?
            }
            guard let reply = try? JSONDecoder().decode(Reply.self, from: Data(response.body)),
                reply.url.hasPrefix("https://") || reply.url.hasPrefix("http://")
            else {
                throw JobBackendError(
                    permanent: false, reason: "storage_unavailable", message: "unreadable GetArtifact reply")
            }
            return Resolved(url: reply.url, sha256: reply.sha256)
        case 404:
            throw JobBackendError(
                permanent: true, reason: "artifact_not_found", message: "the storage service has no \(reference)")
        case 403:
            throw JobBackendError(
                permanent: true, reason: "artifact_forbidden", message: "the artifact is not this organization's")
        default:
            throw JobBackendError(
                permanent: false, reason: "storage_unavailable", message: "GetArtifact answered \(response.status)")
        }
    }

    /// Deletes an `s3://` artifact through the storage service (the cleaner, after retention):
    /// `DELETE {STORAGE_URL}/v1/artifacts?ref=<reference>` with the same headers as GetArtifact.
    /// True when it is gone: 200, 202, 204, or 404 (already gone). Any other answer, or no
    /// answer, is false (the scan is kept for the next run).
    public func delete(_ reference: String, organizationID: UUID) async -> Bool {
        guard reference.hasPrefix("s3://"), let storageURL else { return false }
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        var headers = [("Accept", "application/json"), ("X-Organization-Id", organizationID.uuidString.lowercased())]
        if let token { headers.append(("Authorization", "Bearer \(token)")) }
        guard
            let response = try? await http.perform(
                HTTPRequest(
                    method: "DELETE",
                    url:
                        "\(storageURL)/v1/artifacts?ref=\(reference.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")",
                    headers: headers, timeout: .seconds(10), maximumResponseBytes: 64 << 10))
        else { return false }
        return [200, 202, 204, 404].contains(response.status)
    }
}
