package controller

// FindEntry is findEntry, for the envtests of package controller_test.
var FindEntry = findEntry
