import Foundation

/// Which artifact URLs a deployment accepts, checked on every path a scan is created by (HTTP,
/// gRPC, a gateway's own scan.create) and again at dispatch.
///
/// - `s3://` references go through the storage service, which answers for the organization.
/// - `https://` is accepted; with ``httpsHosts`` set, only for those hosts (`*.example.com`
///   matches subdomains).
/// - `http://` only in development (``allowHTTP``).
/// - `file://` only in development (``allowAnyFile``) or under ``fileRoots``, where a root may
///   hold `{organization_id}` so each organization has a directory of its own. A file URL is
///   checked lexically (absolute, no `.`/`..`/empty components, no `%` escapes), so whether a
///   path exists never changes the answer.
public struct ArtifactPolicy: Sendable, Hashable {
    public var allowAnyFile: Bool
    public var fileRoots: [String]
    public var allowHTTP: Bool
    public var httpsHosts: [String]

    public init(
        allowAnyFile: Bool = false, fileRoots: [String] = [], allowHTTP: Bool = false, httpsHosts: [String] = []
    ) {
        self.allowAnyFile = allowAnyFile
        self.fileRoots = fileRoots.map { $0.hasSuffix("/") && $0.count > 1 ? String($0.dropLast()) : $0 }
        self.allowHTTP = allowHTTP
        self.httpsHosts = httpsHosts.map { $0.lowercased() }
    }

    /// A production deployment with nothing configured: https and s3 only.
    public static let standard = ArtifactPolicy()
    /// `cloudscan dev`: every scheme, files anywhere.
    public static let development = ArtifactPolicy(allowAnyFile: true, allowHTTP: true)

    /// Refuses a URL this deployment does not accept, naming `artifact.url`.
    public func check(_ url: String, organizationID: UUID) throws(ScanServiceError) {
        let field = "artifact.url"
        if url.hasPrefix("s3://") { return }
        if url.hasPrefix("https://") || url.hasPrefix("http://") {
            if url.hasPrefix("http://") && !allowHTTP {
                throw .invalidArgument(field: field, "plain http artifacts are refused; use https or s3")
            }
            guard let host = Self.host(of: url) else {
                throw .invalidArgument(field: field, "not a URL with a host")
            }
            if !httpsHosts.isEmpty && !httpsHosts.contains(where: { Self.matches(host: host, pattern: $0) }) {
                throw .invalidArgument(field: field, "this deployment accepts artifacts from its allowed hosts only")
            }
            return
        }
        if url.hasPrefix("file://") {
            guard allowAnyFile || !fileRoots.isEmpty else {
                throw .invalidArgument(field: field, "file artifacts are not accepted by this deployment")
            }
            guard let path = Self.cleanFilePath(url) else {
                throw .invalidArgument(
                    field: field, "a file URL is file:///<absolute path> without ., .., empty components or % escapes")
            }
            if allowAnyFile { return }
            let organization = organizationID.uuidString.lowercased()
            let allowed = fileRoots.contains { root in
                let directory = root.replacingOccurrences(of: "{organization_id}", with: organization)
                return path.hasPrefix(directory == "/" ? "/" : directory + "/")
            }
            guard allowed else {
                throw .invalidArgument(field: field, "file artifacts must be under this organization's artifact root")
            }
            return
        }
        throw .invalidArgument(field: field, "an https, http, file or s3 URL")
    }

    /// The path of `file:///…` (or `file://localhost/…`) when it is clean, else nil.
    public static func cleanFilePath(_ url: String) -> String? {
        var rest = Substring(url.dropFirst("file://".count))
        if rest.hasPrefix("localhost/") { rest = rest.dropFirst("localhost".count) }
        guard rest.hasPrefix("/"), !rest.contains("%"), !rest.contains("\0"), !rest.contains("?"), !rest.contains("#"),
            !rest.contains("\\")
        else { return nil }
        let parts = rest.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else { return nil }
        return String(rest)
    }

    /// The lowercased host of an http(s) URL, nil when it has none or carries user info.
    public static func host(of url: String) -> String? {
        guard let components = URLComponents(string: url), let host = components.host, !host.isEmpty,
            components.user == nil, components.password == nil
        else { return nil }
        return host.lowercased()
    }

    static func matches(host: String, pattern: String) -> Bool {
        if pattern.hasPrefix("*.") { return host.hasSuffix(String(pattern.dropFirst())) }
        return host == pattern
    }
}
