// Package cri is what the hopless NRI plugin asks the node's containerd over its
// gRPC socket: the manifest digest that CRI pulled for an image reference
// (Client.ImageDigest), and whether CRI reads the hosts.toml that the plugin writes
// (Client.Check, Report.Problems). It uses CRI's v1 image service and containerd's
// introspection and images services.
//
// The facts it relies on, as of containerd 2.4:
//
//   - CRI's verbose Status carries the CRI runtime's config as JSON under
//     Info["config"], and not the images config: the registry settings and the pull
//     settings are not in it.
//   - The introspection service lists every plugin of containerd's graph: one in
//     disabled_plugins is not listed, one that failed or skipped its load is listed
//     with an init error. CRI's images plugin, io.containerd.cri.v1.images, exports
//     RegistryConfigPath (its registry.config_path, with the Linux default
//     "/etc/containerd/certs.d:/etc/docker/certs.d" filled in when neither
//     config_path nor the deprecated registry.mirrors are set) and
//     DiscardUnpackedLayers.
//   - CRI pulls through the transfer service unless one of its images settings sends
//     pulls down the local path (see PullMode). The deprecated registry.mirrors,
//     registry.configs and registry.auths each raise a deprecation warning that the
//     introspection service reports; use_local_image_pull, max_concurrent_downloads,
//     disable_snapshot_annotations and image_pull_with_sync_fs show nowhere.
//   - The transfer service takes registry.config_path as a single directory. The
//     local path splits it at ':' and, for each host, takes the first directory that
//     has a directory for that host.
//   - The key is plugins.'io.containerd.cri.v1.images'.registry.config_path in a
//     config.toml of version 3 or 4, and plugins."io.containerd.grpc.v1.cri".registry.config_path
//     in one of version 2, which containerd migrates on load.
//   - The NRI plugin, io.containerd.nri.v1.nri, loads even with disable = true, and
//     exports nothing: only its absence (disabled_plugins) or an init error shows.
//   - hopless's own containerd build registers the plugin io.containerd.hopless.v1.hopless;
//     without its config section it is listed with the init error "skip plugin".
//   - CRI's ImageStatus answers with no image when it has none. An image's
//     RepoDigests are "repository@digest" (or "repository:tag@digest" when pulled by
//     both), the repository fully qualified (docker.io/library/busybox), the digest
//     that of the manifest or index pulled. CRI keys an image by its config digest,
//     so manifests that share a config give one image several repo digests of a
//     repository; containerd's own image record of the tag, in namespace k8s.io,
//     says which one the tag was pulled as.
package cri
