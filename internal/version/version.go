// Package version names this build of hopless.
package version

// Version is the hopless release.
const Version = "0.1.0"
