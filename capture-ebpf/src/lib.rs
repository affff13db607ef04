#![no_std]
// Exists so the crate has a library target that capture-user can declare as a build dependency.
