/** Cluster-wide role names shared by the bootstrap, the server and the tests. */
export const ROLES = { owner: "tdc_owner", authenticator: "tdc_authenticator", anonymous: "tdc_anonymous" } as const;
