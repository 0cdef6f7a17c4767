package controller

// FindEntry is findEntry, for the envtests of package controller_test.
var FindEntry = findEntry

// SliceServiceIndex is sliceServiceIndex, for the envtests of package
// controller_test.
const SliceServiceIndex = sliceServiceIndex
